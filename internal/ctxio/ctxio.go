// Package ctxio stops long copies when their context ends.
package ctxio

import (
	"context"
	"io"
)

// Writer returns a writer to w whose writes fail with ctx's cause once
// ctx is done: a snapshot being copied through it stops, and with it the
// read transaction that would keep the database from closing.
func Writer(ctx context.Context, w io.Writer) io.Writer { return writer{ctx, w} }

type writer struct {
	ctx context.Context
	w   io.Writer
}

func (c writer) Write(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, context.Cause(c.ctx)
	}
	return c.w.Write(p)
}
