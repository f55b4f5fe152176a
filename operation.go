package kpd

import "context"

// Operation names of the API routes (SPEC section 6). AT Protocol service
// tokens name the operation they allow in their lxm claim.
const (
	OpPublishKeyPackages = "kpd.publishKeyPackages"
	OpGetInventory       = "kpd.getInventory"
	OpDeleteKeyPackages  = "kpd.deleteKeyPackages"
	OpSyncKeyPackages    = "kpd.syncKeyPackages"
	OpListDevices        = "kpd.listDevices"
	OpDeleteDevice       = "kpd.deleteDevice"
	OpClaimKeyPackages   = "kpd.claimKeyPackages"
	OpPostWelcome        = "kpd.postWelcome"
	OpGetWelcomeStatus   = "kpd.getWelcomeStatus"
	OpListWelcomes       = "kpd.listWelcomes"
	OpAckWelcome         = "kpd.ackWelcome"
	OpRejectWelcome      = "kpd.rejectWelcome"
	OpTakeWelcome        = "kpd.takeWelcome"
)

type operationKey struct{}

// WithOperation returns a context that carries the operation name of the
// route being served, for authenticators that check it.
func WithOperation(ctx context.Context, op string) context.Context {
	return context.WithValue(ctx, operationKey{}, op)
}

// OperationFrom returns the operation name set by WithOperation, or "".
func OperationFrom(ctx context.Context) string {
	op, _ := ctx.Value(operationKey{}).(string)
	return op
}
