// Package lincheck checks that kpd's KeyPackage pools are linearizable.
//
// Histories of concurrent publish, claim, Welcome post and ack operations,
// recorded against a real server with their call and return times, are
// checked with porcupine against a sequential model: per device, a FIFO pool
// of regular KeyPackages plus at most one last-resort KeyPackage. Publishing
// appends new refs (a ref the device already has is a duplicate and changes
// nothing); a claim hands out the oldest available regular ref, else the last
// resort, else reports the device missing; a Welcome post opens a delivery for
// a claimed ref; an ack consumes it. If no sequential order of the operations,
// consistent with their real-time order, explains every answer, the history
// is not linearizable.
package lincheck

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/kpd-dir/kpd"
)

// Kind names an operation of a history.
type Kind string

// The operations the model knows.
const (
	KindPublish     Kind = "publish"
	KindClaim       Kind = "claim"
	KindPostWelcome Kind = "post-welcome"
	KindAck         Kind = "ack"
)

// KeyPackage is one item of a publish: its ref and whether it is a last
// resort.
type KeyPackage struct {
	Ref        kpd.Ref
	LastResort bool
}

// Input is what one operation asked. Every operation concerns exactly one
// device, named by Device (any string that identifies the DID and device
// together); histories are partitioned by it.
type Input struct {
	Kind   Kind
	Device string
	// KeyPackages are the items of a publish, in request order.
	KeyPackages []KeyPackage
	// Ref is the KeyPackage a posted or acked Welcome was made for.
	Ref kpd.Ref
	// WelcomeID names the Welcome of a post or an ack.
	WelcomeID string
}

// Output is what the server answered to one operation.
type Output struct {
	// Err is the error code of a failed operation; empty on success.
	Err kpd.Code
	// Statuses are a publish's per-item outcomes, in request order.
	Statuses []kpd.PublishStatus
	// Available is the device's count of available regular KeyPackages
	// that a publish reported in its inventory.
	Available int
	// Ref is the KeyPackage a claim handed out, or the one an ack consumed.
	Ref kpd.Ref
	// LastResort reports whether a claim handed out the last resort.
	LastResort bool
	// Missing is a claim's reason for handing out nothing.
	Missing kpd.Code
	// Rejected is the reason a posted Welcome's ref was not routed.
	Rejected kpd.Code
}

// refState is where one published ref is in the model.
type refState byte

const (
	refAvailable refState = 'a'
	refClaimed   refState = 'c'
	refConsumed  refState = 'x'
	// refRetired is a last resort replaced by a newer one.
	refRetired refState = 'r'
)

// pool is the model's state of one device. It is never modified once built:
// every step returns a new pool.
type pool struct {
	// queue holds the available regular refs, oldest first.
	queue      []kpd.Ref
	lastResort kpd.Ref
	// refs holds every ref the device ever published.
	refs map[kpd.Ref]refState
	// deliveries maps a posted Welcome's id to its ref; acked holds the
	// acknowledged ones.
	deliveries map[string]kpd.Ref
	acked      map[string]bool
	// key is a canonical encoding of the state, for Equal and Hash.
	key string
}

func (p *pool) clone() *pool {
	return &pool{
		queue:      slices.Clone(p.queue),
		lastResort: p.lastResort,
		refs:       cloneMap(p.refs),
		deliveries: cloneMap(p.deliveries),
		acked:      cloneMap(p.acked),
	}
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// seal computes the canonical key and returns p.
func (p *pool) seal() *pool {
	var b strings.Builder
	for _, r := range p.queue {
		b.WriteString(string(r))
		b.WriteByte(',')
	}
	b.WriteString("|lr=")
	b.WriteString(string(p.lastResort))
	b.WriteByte('|')
	refs := make([]string, 0, len(p.refs))
	for r, s := range p.refs {
		refs = append(refs, string(r)+"="+string(s))
	}
	slices.Sort(refs)
	b.WriteString(strings.Join(refs, ","))
	b.WriteByte('|')
	dels := make([]string, 0, len(p.deliveries))
	for id, r := range p.deliveries {
		dels = append(dels, fmt.Sprintf("%s>%s:%t", id, r, p.acked[id]))
	}
	slices.Sort(dels)
	b.WriteString(strings.Join(dels, ","))
	p.key = b.String()
	return p
}

func emptyPool() *pool {
	return (&pool{
		refs:       map[kpd.Ref]refState{},
		deliveries: map[string]kpd.Ref{},
		acked:      map[string]bool{},
	}).seal()
}

// step applies in to p and reports whether out is the answer the model
// gives, with the state after it.
func (p *pool) step(in Input, out Output) (bool, *pool) {
	switch in.Kind {
	case KindPublish:
		return p.publish(in, out)
	case KindClaim:
		return p.claim(out)
	case KindPostWelcome:
		return p.postWelcome(in, out)
	case KindAck:
		return p.ack(in, out)
	}
	return false, p
}

func (p *pool) publish(in Input, out Output) (bool, *pool) {
	if out.Err != "" || len(out.Statuses) != len(in.KeyPackages) {
		return false, p
	}
	n := p.clone()
	for i, kp := range in.KeyPackages {
		want := kpd.PublishStored
		if _, ok := n.refs[kp.Ref]; ok {
			want = kpd.PublishDuplicate
		} else if kp.LastResort {
			if n.lastResort != "" {
				n.refs[n.lastResort] = refRetired
			}
			n.lastResort = kp.Ref
			n.refs[kp.Ref] = refAvailable
		} else {
			n.queue = append(n.queue, kp.Ref)
			n.refs[kp.Ref] = refAvailable
		}
		if out.Statuses[i] != want {
			return false, p
		}
	}
	if out.Available != len(n.queue) {
		return false, p
	}
	return true, n.seal()
}

func (p *pool) claim(out Output) (bool, *pool) {
	if out.Err != "" {
		return false, p
	}
	switch {
	case len(p.queue) > 0:
		if out.Ref != p.queue[0] || out.LastResort || out.Missing != "" {
			return false, p
		}
		n := p.clone()
		n.queue = n.queue[1:]
		n.refs[out.Ref] = refClaimed
		return true, n.seal()
	case p.lastResort != "":
		// Handing out the last resort changes nothing in the pool.
		return out.Ref == p.lastResort && out.LastResort && out.Missing == "", p
	case len(p.refs) == 0:
		return out.Ref == "" && out.Missing == kpd.CodeNoKeyPackages, p
	default:
		return out.Ref == "" && out.Missing == kpd.CodeExhausted, p
	}
}

func (p *pool) postWelcome(in Input, out Output) (bool, *pool) {
	if out.Err != "" {
		return false, p
	}
	if ref, ok := p.deliveries[in.WelcomeID]; ok {
		// Posting the same Welcome again is idempotent.
		return ref == in.Ref && out.Rejected == "", p
	}
	st, known := p.refs[in.Ref]
	var want kpd.Code
	switch {
	case !known:
		want = kpd.CodeUnknownKeyPackage
	case st == refConsumed:
		want = kpd.CodeAlreadyConsumed
	case st == refClaimed, in.Ref == p.lastResort:
	default:
		want = kpd.CodeNotClaimedByCaller
	}
	if out.Rejected != want {
		return false, p
	}
	if want != "" {
		return true, p
	}
	n := p.clone()
	n.deliveries[in.WelcomeID] = in.Ref
	return true, n.seal()
}

func (p *pool) ack(in Input, out Output) (bool, *pool) {
	ref, ok := p.deliveries[in.WelcomeID]
	if !ok {
		return out.Err == kpd.CodeNotFound, p
	}
	if out.Err != "" || out.Ref != ref {
		return false, p
	}
	if p.acked[in.WelcomeID] {
		return true, p
	}
	n := p.clone()
	n.acked[in.WelcomeID] = true
	if ref != n.lastResort {
		n.refs[ref] = refConsumed
	}
	return true, n.seal()
}

// Model returns the sequential specification of per-device KeyPackage pools,
// partitioned by Input.Device. Histories hold Input and Output values.
func Model() porcupine.Model {
	return porcupine.Model{
		Partition: partition,
		Init:      func() any { return emptyPool() },
		Step: func(state, input, output any) (bool, any) {
			return state.(*pool).step(input.(Input), output.(Output))
		},
		Equal: func(a, b any) bool { return a.(*pool).key == b.(*pool).key },
		Hash: func(state any) uint64 {
			h := fnv.New64a()
			h.Write([]byte(state.(*pool).key))
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string {
			return describe(input.(Input), output.(Output))
		},
		DescribeState: func(state any) string {
			p := state.(*pool)
			return fmt.Sprintf("available %v, last resort %q", shortRefs(p.queue), short(p.lastResort))
		},
	}
}

func partition(history []porcupine.Operation) [][]porcupine.Operation {
	var order []string
	byDevice := map[string][]porcupine.Operation{}
	for _, op := range history {
		d := op.Input.(Input).Device
		if _, ok := byDevice[d]; !ok {
			order = append(order, d)
		}
		byDevice[d] = append(byDevice[d], op)
	}
	parts := make([][]porcupine.Operation, 0, len(order))
	for _, d := range order {
		parts = append(parts, byDevice[d])
	}
	return parts
}

func describe(in Input, out Output) string {
	if out.Err != "" {
		return fmt.Sprintf("%s %s -> error %s", in.Kind, in.Device, out.Err)
	}
	switch in.Kind {
	case KindPublish:
		refs := make([]kpd.Ref, len(in.KeyPackages))
		for i, kp := range in.KeyPackages {
			refs[i] = kp.Ref
		}
		return fmt.Sprintf("publish %s %v -> %v, available %d", in.Device, shortRefs(refs), out.Statuses, out.Available)
	case KindClaim:
		if out.Missing != "" {
			return fmt.Sprintf("claim %s -> missing %s", in.Device, out.Missing)
		}
		return fmt.Sprintf("claim %s -> %s (last resort %t)", in.Device, short(out.Ref), out.LastResort)
	case KindPostWelcome:
		return fmt.Sprintf("post-welcome %s %s -> rejected %q", in.Device, short(in.Ref), out.Rejected)
	default:
		return fmt.Sprintf("%s %s %s -> %s", in.Kind, in.Device, in.WelcomeID, short(out.Ref))
	}
}

func short(r kpd.Ref) string {
	if len(r) > 8 {
		return string(r[:8])
	}
	return string(r)
}

func shortRefs(refs []kpd.Ref) []string {
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = short(r)
	}
	return s
}

// Check reports whether history is linearizable with respect to Model,
// giving up after timeout (0: no limit; the answer is then
// porcupine.Unknown). The returned info can be rendered with
// porcupine.Visualize to show where a history went wrong.
func Check(history []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(Model(), history, timeout)
}
