package agent

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credflow/credflow/reason"
)

// ErrNotReady matches every *NotReadyError with errors.Is.
var ErrNotReady = errors.New("agent: not ready")

// NotReadyError says why a Source cannot hand out an X.509-SVID.
type NotReadyError struct {
	// Reason is one of the Workload API reasons of package reason
	// (reason.Starting, reason.NoIdentity, reason.AgentUnavailable, …).
	Reason reason.Reason
	// Err is the last Workload API error, if any.
	Err error
}

func (e *NotReadyError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("agent: not ready (%s): %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("agent: not ready (%s)", e.Reason)
}

// Why returns e.Reason.
func (e *NotReadyError) Why() reason.Reason { return e.Reason }

// Unwrap returns the underlying Workload API error.
func (e *NotReadyError) Unwrap() error { return e.Err }

// Is reports whether target is ErrNotReady.
func (e *NotReadyError) Is(target error) bool { return target == ErrNotReady }

// ReasonOf classifies a Workload API error.
func ReasonOf(err error) reason.Reason {
	if err == nil {
		return ""
	}
	var nre *NotReadyError
	if errors.As(err, &nre) {
		return nre.Reason
	}
	if errors.Is(err, io.EOF) {
		return reason.StreamEnded
	}
	if _, ok := status.FromError(err); !ok {
		// Not a gRPC status: a response that did not parse.
		return reason.BadResponse
	}
	switch status.Code(err) {
	case codes.PermissionDenied:
		return reason.NoIdentity
	case codes.Unavailable:
		return reason.AgentUnavailable
	case codes.Canceled:
		return reason.Closed
	default:
		return reason.APIError
	}
}
