package kv

import (
	"cmp"
	"context"
	"slices"

	"github.com/kpd-dir/kpd"
)

// PutToken stores an API token under its hash, replacing a token with the
// same hash. The caller fills every field (ID is the hex of the first 8
// bytes of Hash). BadRequest for an empty hash or ID, or an invalid DID.
func (db *DB) PutToken(ctx context.Context, tok kpd.Token) error {
	switch {
	case len(tok.Hash) == 0 || tok.ID == "":
		return kpd.Errorf(kpd.CodeBadRequest, "token without hash or id")
	case !kpd.ValidDID(tok.DID):
		return kpd.Errorf(kpd.CodeBadRequest, "%q is not a DID", tok.DID)
	}
	rec := &tokenRecord{ID: tok.ID, DID: tok.DID, Label: tok.Label, CreatedAt: stampOf(tok.CreatedAt)}
	return db.write(ctx, func(t *txn) error { return t.put(bucketTokens, tok.Hash, rec) })
}

// TokenDID returns the DID of the token with this SHA-256 hash.
// Unauthorized if there is none.
func (db *DB) TokenDID(ctx context.Context, hash []byte) (string, error) {
	var did string
	err := db.read(ctx, func(t *txn) error {
		var rec tokenRecord
		ok, err := t.get(bucketTokens, hash, &rec)
		if err != nil {
			return err
		}
		if !ok || len(hash) == 0 {
			return kpd.Errorf(kpd.CodeUnauthorized, "unknown token")
		}
		did = rec.DID
		return nil
	})
	return did, err
}

// Tokens lists the stored tokens of one DID (did == "": of every DID),
// oldest first.
func (db *DB) Tokens(ctx context.Context, did string) ([]kpd.Token, error) {
	out := []kpd.Token{}
	err := db.read(ctx, func(t *txn) error {
		out = out[:0]
		return t.eachToken(func(hash []byte, rec *tokenRecord) {
			if did == "" || rec.DID == did {
				out = append(out, kpd.Token{ID: rec.ID, Hash: hash, DID: rec.DID, Label: rec.Label, CreatedAt: rec.CreatedAt.time()})
			}
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b kpd.Token) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// RevokeToken deletes the token with this ID (every token with it, should
// two share an ID). NotFound if there is none.
func (db *DB) RevokeToken(ctx context.Context, id string) error {
	return db.write(ctx, func(t *txn) error {
		var hashes [][]byte
		err := t.eachToken(func(hash []byte, rec *tokenRecord) {
			if rec.ID == id {
				hashes = append(hashes, hash)
			}
		})
		if err != nil {
			return refuse(err)
		}
		if len(hashes) == 0 {
			return refuse(kpd.Errorf(kpd.CodeNotFound, "no token %q", id))
		}
		for _, h := range hashes {
			if err := t.bucket(bucketTokens).Delete(h); err != nil {
				return err
			}
		}
		return nil
	})
}

// eachToken calls fn with every token (hash copied, record decoded).
func (t *txn) eachToken(fn func(hash []byte, rec *tokenRecord)) error {
	return t.scan(bucketTokens, nil, func(k, v []byte) error {
		var rec tokenRecord
		if err := decode(v, &rec); err != nil {
			return err
		}
		fn(k, &rec)
		return nil
	})
}
