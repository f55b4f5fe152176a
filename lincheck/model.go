// Package lincheck checks that kpd's KeyPackage pools and Welcome
// deliveries are linearizable.
//
// Histories of concurrent operations on a few devices (publish, claim,
// Welcome post, ack, listing of pending Welcomes, take, inventory),
// recorded against a real server with their call and return times, are
// checked with porcupine against a sequential model of one device: a FIFO
// pool of regular KeyPackages plus at most one last-resort KeyPackage, the
// DID that claimed each handed-out KeyPackage, and the device's Welcome
// deliveries with their senders, in posting order. Publishing appends new
// refs (a ref the device already has is a duplicate and changes nothing); a
// claim hands out the oldest available regular ref, else the last resort,
// else reports the device missing; a Welcome post by the claimer of a ref
// (anyone, for the last resort) opens a pending delivery and binds the ref
// to that Welcome; an ack or a take ends the delivery and consumes its ref.
// Every answer the model gives depends only on the operations before it, so
// an ack that did not happen shows in a later listing, take, inventory,
// publish inventory or repeated post. If no sequential order of the
// operations, consistent with their real-time order, explains every answer,
// the history is not linearizable. The model knows one cipher suite and no
// quotas, lifetimes, deletions, syncs or rejections: the recorded histories
// stay clear of them.
//
// An operation whose answer never came (a transport error, a timeout, a 5xx)
// has an unknown outcome: it is recorded with Output.Unknown set and a
// return time at the end of the history, and the model accepts it with its
// effect. Linearized last it is the same as an operation that never took
// effect, so either outcome is accepted.
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
	// KindList lists the device's pending Welcomes (GET
	// /v1/devices/{device}/welcomes, without waiting).
	KindList Kind = "list"
	// KindTake takes the device's oldest pending Welcome (of any
	// conversation) and acknowledges it.
	KindTake Kind = "take"
	// KindInventory reads the device's inventory with its KeyPackages
	// listed.
	KindInventory Kind = "inventory"
)

// DefaultListLimit is how many pending Welcomes a listing returns when it
// asks for no limit (docs/API.md).
const DefaultListLimit = 100

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
	// Caller is the DID that sent a claim or a Welcome post.
	Caller string
	// KeyPackages are the items of a publish, in request order.
	KeyPackages []KeyPackage
	// Ref is the KeyPackage a posted or acked Welcome was made for.
	Ref kpd.Ref
	// WelcomeID names the Welcome of a post or an ack.
	WelcomeID string
	// Limit is the most Welcomes a listing asks for (0: DefaultListLimit).
	Limit int
}

// Counts are a device's inventory for the one cipher suite of a history.
type Counts struct {
	// Available counts the available regular KeyPackages.
	Available int
	// Claimed counts the regular KeyPackages claimed and not yet consumed.
	Claimed int
	// LastResort is the current last resort, if any.
	LastResort kpd.Ref
}

// Pending is one pending Welcome of a listing.
type Pending struct {
	WelcomeID string
	Ref       kpd.Ref
	Sender    string
}

// Listed is one KeyPackage of an inventory listing.
type Listed struct {
	Ref        kpd.Ref
	State      kpd.KeyPackageState
	LastResort bool
}

// Output is what the server answered to one operation.
type Output struct {
	// Unknown marks an operation whose outcome is unknown: no answer came,
	// or one (a 5xx) that does not say whether it took effect. The other
	// fields are then not compared; Err may name the code of a 5xx.
	Unknown bool
	// Err is the error code of a failed operation; empty on success.
	Err kpd.Code
	// Statuses are a publish's per-item outcomes, in request order.
	Statuses []kpd.PublishStatus
	// Counts is the inventory of a publish or an inventory read.
	Counts Counts
	// Ref is the KeyPackage a claim handed out, or the one an ack or take
	// consumed.
	Ref kpd.Ref
	// LastResort reports whether a claim handed out the last resort.
	LastResort bool
	// Missing is a claim's reason for handing out nothing.
	Missing kpd.Code
	// Rejected is the reason a posted Welcome's ref was not routed (the
	// post was answered 422).
	Rejected kpd.Code
	// Created reports that a post stored a new Welcome (201), and Status
	// is the delivery status of its ref (a post repeated with the same
	// bytes answers 200 and the current status).
	Created bool
	Status  kpd.DeliveryState
	// WelcomeID is the Welcome a take returned.
	WelcomeID string
	// Pending are the Welcomes a listing returned, oldest first.
	Pending []Pending
	// KeyPackages are an inventory's KeyPackages, in publish order.
	KeyPackages []Listed
}

// equal reports whether two answers are the same. Unknown answers are
// never compared.
func (o Output) equal(p Output) bool {
	return o.Unknown == p.Unknown && o.Err == p.Err && slices.Equal(o.Statuses, p.Statuses) &&
		o.Counts == p.Counts && o.Ref == p.Ref && o.LastResort == p.LastResort &&
		o.Missing == p.Missing && o.Rejected == p.Rejected && o.Created == p.Created &&
		o.Status == p.Status && o.WelcomeID == p.WelcomeID && slices.Equal(o.Pending, p.Pending) &&
		slices.Equal(o.KeyPackages, p.KeyPackages)
}

// refState is where one stored ref is in the model.
type refState byte

const (
	refAvailable refState = 'a'
	// refClaimed is a regular ref handed out by a claim, refBound one a
	// Welcome of its claimer was routed to: no other Welcome takes it.
	refClaimed  refState = 'c'
	refBound    refState = 'b'
	refConsumed refState = 'x'
	// refRetired is a last resort replaced by a newer one while Welcomes
	// routed to it are pending; it leaves when the last one ends.
	refRetired refState = 'r'
)

// kp is the model's record of one stored ref.
type kp struct {
	state      refState
	lastResort bool
	// claimer is the DID that claimed a regular ref.
	claimer string
}

// delivery is a Welcome routed to the device.
type delivery struct {
	ref    kpd.Ref
	sender string
	acked  bool
}

// pool is the model's state of one device. It is never modified once built:
// every step returns a new pool.
type pool struct {
	// exists is set once a publish created the device.
	exists bool
	// order holds the stored refs in publish order; refs their records.
	order []kpd.Ref
	refs  map[kpd.Ref]kp
	// queue holds the available regular refs, oldest first.
	queue      []kpd.Ref
	lastResort kpd.Ref
	// deliveries maps a routed Welcome's id to its delivery; pending holds
	// the ids of the pending ones, oldest first.
	deliveries map[string]delivery
	pending    []string
	// key is a canonical encoding of the state, for Equal and Hash.
	key string
}

func (p *pool) clone() *pool {
	c := *p
	c.order = slices.Clone(p.order)
	c.refs = cloneMap(p.refs)
	c.queue = slices.Clone(p.queue)
	c.deliveries = cloneMap(p.deliveries)
	c.pending = slices.Clone(p.pending)
	c.key = ""
	return &c
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
	fmt.Fprintf(&b, "%t|", p.exists)
	for _, r := range p.order {
		k := p.refs[r]
		fmt.Fprintf(&b, "%s=%c%t%s,", r, k.state, k.lastResort, k.claimer)
	}
	b.WriteString("|q=")
	for _, r := range p.queue {
		b.WriteString(string(r))
		b.WriteByte(',')
	}
	b.WriteString("|lr=")
	b.WriteString(string(p.lastResort))
	b.WriteString("|p=")
	b.WriteString(strings.Join(p.pending, ","))
	dels := make([]string, 0, len(p.deliveries))
	for id, d := range p.deliveries {
		dels = append(dels, fmt.Sprintf("%s>%s:%s:%t", id, d.ref, d.sender, d.acked))
	}
	slices.Sort(dels)
	b.WriteString("|d=")
	b.WriteString(strings.Join(dels, ","))
	p.key = b.String()
	return p
}

func emptyPool() *pool {
	return (&pool{refs: map[kpd.Ref]kp{}, deliveries: map[string]delivery{}}).seal()
}

// step applies in to p and reports whether out is the answer the model
// gives, with the state after it. An unknown outcome is accepted with the
// operation's effect: its return time at the end of the history lets it be
// linearized after every other operation, which is the same as no effect.
func (p *pool) step(in Input, out Output) (bool, *pool) {
	want, next := p.apply(in)
	if out.Unknown {
		return true, next
	}
	if !out.equal(want) {
		return false, p
	}
	return true, next
}

// apply returns the answer the specification gives to in and the state
// after it.
func (p *pool) apply(in Input) (Output, *pool) {
	switch in.Kind {
	case KindPublish:
		return p.publish(in)
	case KindClaim:
		return p.claim(in)
	case KindPostWelcome:
		return p.postWelcome(in)
	case KindAck:
		return p.ack(in)
	case KindTake:
		return p.take()
	case KindList:
		return p.list(in)
	case KindInventory:
		return p.inventory()
	}
	// An operation the model does not know is never explained.
	return Output{Err: "UnknownOperation(model)"}, p
}

func (p *pool) counts() Counts {
	c := Counts{Available: len(p.queue), LastResort: p.lastResort}
	for _, k := range p.refs {
		if k.state == refClaimed || k.state == refBound {
			c.Claimed++
		}
	}
	return c
}

// remove forgets a stored ref.
func (p *pool) remove(ref kpd.Ref) {
	delete(p.refs, ref)
	p.order = slices.DeleteFunc(p.order, func(r kpd.Ref) bool { return r == ref })
}

// pendingFor reports whether a pending delivery names ref.
func (p *pool) pendingFor(ref kpd.Ref) bool {
	for _, id := range p.pending {
		if p.deliveries[id].ref == ref {
			return true
		}
	}
	return false
}

// publish stores the new refs of a batch; a ref the device has (in any
// state) is a duplicate. A new last resort replaces the current one, which
// is deleted, or retired while Welcomes routed to it are pending.
func (p *pool) publish(in Input) (Output, *pool) {
	n := p.clone()
	out := Output{Statuses: make([]kpd.PublishStatus, len(in.KeyPackages))}
	for i, item := range in.KeyPackages {
		n.exists = true
		if _, ok := n.refs[item.Ref]; ok {
			out.Statuses[i] = kpd.PublishDuplicate
			continue
		}
		out.Statuses[i] = kpd.PublishStored
		if item.LastResort {
			if old := n.lastResort; old != "" {
				if n.pendingFor(old) {
					n.refs[old] = kp{state: refRetired, lastResort: true}
				} else {
					n.remove(old)
				}
			}
			n.lastResort = item.Ref
		} else {
			n.queue = append(n.queue, item.Ref)
		}
		n.refs[item.Ref] = kp{state: refAvailable, lastResort: item.LastResort}
		n.order = append(n.order, item.Ref)
	}
	if !n.exists {
		// An empty batch for a device that does not exist creates
		// nothing.
		return out, p
	}
	out.Counts = n.counts()
	return out, n.seal()
}

func (p *pool) claim(in Input) (Output, *pool) {
	switch {
	case len(p.queue) > 0:
		n := p.clone()
		ref := n.queue[0]
		n.queue = n.queue[1:]
		n.refs[ref] = kp{state: refClaimed, claimer: in.Caller}
		return Output{Ref: ref}, n.seal()
	case p.lastResort != "":
		// Handing out the last resort changes nothing in the pool.
		return Output{Ref: p.lastResort, LastResort: true}, p
	case !p.exists:
		return Output{Missing: kpd.CodeNoKeyPackages}, p
	default:
		return Output{Missing: kpd.CodeExhausted}, p
	}
}

// postWelcome routes a Welcome naming in.Ref (its only new member) from
// in.Caller, as kv's routeRefusal does: a last resort that is the device's
// current one takes Welcomes from anyone; a regular ref only from the DID
// that claimed it, and only one Welcome.
func (p *pool) postWelcome(in Input) (Output, *pool) {
	if d, ok := p.deliveries[in.WelcomeID]; ok {
		// The same bytes again: the stored result, from its sender only.
		if d.sender != in.Caller {
			return Output{Err: kpd.CodeConflict}, p
		}
		st := kpd.DeliveryPending
		if d.acked {
			st = kpd.DeliveryAcked
		}
		return Output{Status: st}, p
	}
	k, known := p.refs[in.Ref]
	var reason kpd.Code
	switch {
	case !known, k.state == refRetired:
		reason = kpd.CodeUnknownKeyPackage
	case k.lastResort:
	case k.state == refConsumed, k.state == refBound:
		reason = kpd.CodeAlreadyConsumed
	case k.state != refClaimed || k.claimer != in.Caller:
		reason = kpd.CodeNotClaimedByCaller
	}
	if reason != "" {
		// Nothing routes: 422, nothing stored.
		return Output{Rejected: reason}, p
	}
	n := p.clone()
	n.deliveries[in.WelcomeID] = delivery{ref: in.Ref, sender: in.Caller}
	n.pending = append(n.pending, in.WelcomeID)
	if !k.lastResort {
		k.state = refBound
		n.refs[in.Ref] = k
	}
	return Output{Created: true, Status: kpd.DeliveryPending}, n.seal()
}

// settle acknowledges the pending delivery id of p, a fresh clone, and
// consumes its ref; a last resort stays, unless it was retired and this was
// the last delivery naming it.
func (p *pool) settle(id string) kpd.Ref {
	d := p.deliveries[id]
	d.acked = true
	p.deliveries[id] = d
	p.pending = slices.DeleteFunc(p.pending, func(pending string) bool { return pending == id })
	k := p.refs[d.ref]
	switch {
	case !k.lastResort:
		p.refs[d.ref] = kp{state: refConsumed, claimer: k.claimer}
	case k.state == refRetired && !p.pendingFor(d.ref):
		p.remove(d.ref)
	}
	return d.ref
}

func (p *pool) ack(in Input) (Output, *pool) {
	d, ok := p.deliveries[in.WelcomeID]
	switch {
	case !ok:
		return Output{Err: kpd.CodeNotFound}, p
	case d.acked:
		// Idempotent: the first ack's answer.
		return Output{Ref: d.ref}, p
	}
	n := p.clone()
	ref := n.settle(in.WelcomeID)
	return Output{Ref: ref}, n.seal()
}

func (p *pool) take() (Output, *pool) {
	if len(p.pending) == 0 {
		return Output{Err: kpd.CodeNotFound}, p
	}
	n := p.clone()
	id := n.pending[0]
	ref := n.settle(id)
	return Output{WelcomeID: id, Ref: ref}, n.seal()
}

func (p *pool) list(in Input) (Output, *pool) {
	if !p.exists {
		return Output{Err: kpd.CodeNotFound}, p
	}
	limit := in.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	out := Output{}
	for _, id := range p.pending[:min(limit, len(p.pending))] {
		d := p.deliveries[id]
		out.Pending = append(out.Pending, Pending{WelcomeID: id, Ref: d.ref, Sender: d.sender})
	}
	return out, p
}

func (p *pool) inventory() (Output, *pool) {
	if !p.exists {
		return Output{Err: kpd.CodeNotFound}, p
	}
	out := Output{Counts: p.counts()}
	for _, r := range p.order {
		k := p.refs[r]
		st := kpd.StateAvailable
		switch k.state {
		case refClaimed, refBound:
			st = kpd.StateClaimed
		case refConsumed:
			st = kpd.StateConsumed
		}
		out.KeyPackages = append(out.KeyPackages, Listed{Ref: r, State: st, LastResort: k.lastResort})
	}
	return out, p
}

// Model returns the sequential specification of per-device KeyPackage pools
// and Welcome deliveries, partitioned by Input.Device. Histories hold Input
// and Output values.
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
			return fmt.Sprintf("available %v, claimed %d, last resort %q, pending %v",
				shortRefs(p.queue), p.counts().Claimed, short(p.lastResort), shortIDs(p.pending))
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
	var what string
	switch in.Kind {
	case KindPublish:
		refs := make([]kpd.Ref, len(in.KeyPackages))
		for i, kp := range in.KeyPackages {
			refs[i] = kp.Ref
		}
		what = fmt.Sprintf("publish %s %v", in.Device, shortRefs(refs))
	case KindClaim:
		what = fmt.Sprintf("claim %s by %s", in.Device, in.Caller)
	case KindPostWelcome:
		what = fmt.Sprintf("post-welcome %s %s %s by %s", in.Device, short(in.WelcomeID), short(in.Ref), in.Caller)
	case KindAck:
		what = fmt.Sprintf("ack %s %s", in.Device, short(in.WelcomeID))
	default:
		what = fmt.Sprintf("%s %s", in.Kind, in.Device)
	}
	switch {
	case out.Unknown:
		return fmt.Sprintf("%s -> unknown outcome %s", what, out.Err)
	case out.Err != "":
		return fmt.Sprintf("%s -> error %s", what, out.Err)
	}
	switch in.Kind {
	case KindPublish:
		return fmt.Sprintf("%s -> %v, %+v", what, out.Statuses, out.Counts)
	case KindClaim:
		if out.Missing != "" {
			return fmt.Sprintf("%s -> missing %s", what, out.Missing)
		}
		return fmt.Sprintf("%s -> %s (last resort %t)", what, short(out.Ref), out.LastResort)
	case KindPostWelcome:
		if out.Rejected != "" {
			return fmt.Sprintf("%s -> rejected %s", what, out.Rejected)
		}
		return fmt.Sprintf("%s -> %s (created %t)", what, out.Status, out.Created)
	case KindTake:
		return fmt.Sprintf("%s -> %s %s", what, short(out.WelcomeID), short(out.Ref))
	case KindList:
		ids := make([]string, len(out.Pending))
		for i, pw := range out.Pending {
			ids[i] = pw.WelcomeID
		}
		return fmt.Sprintf("%s -> %v", what, shortIDs(ids))
	case KindInventory:
		return fmt.Sprintf("%s -> %+v, %d listed", what, out.Counts, len(out.KeyPackages))
	default:
		return fmt.Sprintf("%s -> %s", what, short(out.Ref))
	}
}

func short[S ~string](s S) string {
	if len(s) > 8 {
		return string(s[:8])
	}
	return string(s)
}

func shortRefs(refs []kpd.Ref) []string {
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = short(r)
	}
	return s
}

func shortIDs(ids []string) []string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = short(id)
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
