package mlstest

import (
	"encoding/binary"

	"github.com/kpd-dir/kpd/mls"
)

// appendKeyPackageTBS appends the KeyPackageTBS of kp: the KeyPackage
// without its signature.
func appendKeyPackageTBS(b []byte, kp *mls.KeyPackage) []byte {
	b = binary.BigEndian.AppendUint16(b, kp.Version)
	b = binary.BigEndian.AppendUint16(b, uint16(kp.CipherSuite))
	b = mls.AppendOpaque(b, kp.InitKey)
	b = appendLeafNodeTBS(b, &kp.LeafNode)
	b = mls.AppendOpaque(b, kp.LeafNode.Signature)
	return appendExtensions(b, kp.Extensions)
}

// appendLeafNodeTBS appends ln without its signature, which is the
// LeafNodeTBS of a key_package leaf.
func appendLeafNodeTBS(b []byte, ln *mls.LeafNode) []byte {
	b = mls.AppendOpaque(b, ln.EncryptionKey)
	b = mls.AppendOpaque(b, ln.SignatureKey)
	b = appendCredential(b, ln.Credential)
	for _, vs := range [][]uint16{
		ln.Capabilities.Versions, ln.Capabilities.CipherSuites, ln.Capabilities.Extensions,
		ln.Capabilities.Proposals, ln.Capabilities.Credentials,
	} {
		b = appendUint16s(b, vs)
	}
	b = append(b, ln.Source)
	switch ln.Source {
	case mls.SourceKeyPackage:
		b = binary.BigEndian.AppendUint64(b, ln.Lifetime.NotBefore)
		b = binary.BigEndian.AppendUint64(b, ln.Lifetime.NotAfter)
	case mls.SourceCommit:
		b = mls.AppendOpaque(b, ln.ParentHash)
	}
	return appendExtensions(b, ln.Extensions)
}

func appendCredential(b []byte, c mls.Credential) []byte {
	b = binary.BigEndian.AppendUint16(b, c.Type)
	if c.Type != mls.CredentialX509 {
		return mls.AppendOpaque(b, c.Identity)
	}
	var certs []byte
	for _, cert := range c.Certificates {
		certs = mls.AppendOpaque(certs, cert)
	}
	return mls.AppendOpaque(b, certs)
}

func appendUint16s(b []byte, vs []uint16) []byte {
	content := make([]byte, 0, 2*len(vs))
	for _, v := range vs {
		content = binary.BigEndian.AppendUint16(content, v)
	}
	return mls.AppendOpaque(b, content)
}

func appendExtensions(b []byte, exts []mls.Extension) []byte {
	var content []byte
	for _, e := range exts {
		content = binary.BigEndian.AppendUint16(content, e.Type)
		content = mls.AppendOpaque(content, e.Data)
	}
	return mls.AppendOpaque(b, content)
}
