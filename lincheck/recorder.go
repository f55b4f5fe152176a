package lincheck

import (
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Recorder collects a history from concurrent clients. It is safe for
// concurrent use. Times are monotonic nanoseconds since NewRecorder.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

// NewRecorder returns an empty Recorder whose clock starts now.
func NewRecorder() *Recorder {
	return &Recorder{start: time.Now()}
}

// Do records one operation of client: the call time, then run's answer, then
// the return time. It returns run's answer. An answer with Unknown set is
// recorded as returning at the end of the history (see History).
func (r *Recorder) Do(client int, in Input, run func() Output) Output {
	call := time.Since(r.start).Nanoseconds()
	out := run()
	ret := time.Since(r.start).Nanoseconds()
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	r.mu.Unlock()
	return out
}

// Len returns the number of operations recorded so far.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// History returns a copy of the operations recorded so far. Operations of
// unknown outcome return after every other one: they may have taken effect
// at any time after their call, or never, which is the same as taking
// effect last.
func (r *Recorder) History() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return EndUnknown(append([]porcupine.Operation(nil), r.ops...))
}

// EndUnknown sets the return time of every operation of unknown outcome in
// history to one past the latest call or return time of the others, and
// returns history.
func EndUnknown(history []porcupine.Operation) []porcupine.Operation {
	var end int64
	for _, op := range history {
		end = max(end, op.Call)
		if !op.Output.(Output).Unknown {
			end = max(end, op.Return)
		}
	}
	for i, op := range history {
		if op.Output.(Output).Unknown {
			history[i].Return = end + 1
		}
	}
	return history
}
