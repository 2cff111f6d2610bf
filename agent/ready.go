package agent

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Reason is a stable, machine-readable cause for a Source not being ready or
// for a Workload API error. Reasons are used as metric label values and log
// fields, so the set is small and fixed.
type Reason string

// Reasons.
const (
	// ReasonStarting: no SVID has been received yet and the Workload API
	// has reported no error so far.
	ReasonStarting Reason = "starting"
	// ReasonNoIdentity: the Workload API answered that no identity is
	// issued to this workload (it is not registered, or its entry has not
	// reached the agent yet).
	ReasonNoIdentity Reason = "no_identity"
	// ReasonAgentUnavailable: the Workload API socket could not be reached.
	ReasonAgentUnavailable Reason = "agent_unavailable"
	// ReasonStreamEnded: the Workload API closed a watch stream.
	ReasonStreamEnded Reason = "stream_ended"
	// ReasonBadResponse: the Workload API sent something that does not parse.
	ReasonBadResponse Reason = "bad_response"
	// ReasonAPIError: any other Workload API error.
	ReasonAPIError Reason = "api_error"
	// ReasonExpired: the cached SVID has expired and no newer one arrived.
	ReasonExpired Reason = "svid_expired"
	// ReasonClosed: the Source has stopped.
	ReasonClosed Reason = "closed"
)

// ErrNotReady matches every *NotReadyError with errors.Is.
var ErrNotReady = errors.New("agent: not ready")

// NotReadyError says why a Source cannot hand out an X.509-SVID.
type NotReadyError struct {
	Reason Reason
	// Err is the last Workload API error, if any.
	Err error
}

func (e *NotReadyError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("agent: not ready (%s): %v", e.Reason, e.Err)
	}
	return fmt.Sprintf("agent: not ready (%s)", e.Reason)
}

// Unwrap returns the underlying Workload API error.
func (e *NotReadyError) Unwrap() error { return e.Err }

// Is reports whether target is ErrNotReady.
func (e *NotReadyError) Is(target error) bool { return target == ErrNotReady }

// ReasonOf classifies a Workload API error.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var nre *NotReadyError
	if errors.As(err, &nre) {
		return nre.Reason
	}
	if errors.Is(err, io.EOF) {
		return ReasonStreamEnded
	}
	if _, ok := status.FromError(err); !ok {
		// Not a gRPC status: a response that did not parse.
		return ReasonBadResponse
	}
	switch status.Code(err) {
	case codes.PermissionDenied:
		return ReasonNoIdentity
	case codes.Unavailable:
		return ReasonAgentUnavailable
	case codes.Canceled:
		return ReasonClosed
	default:
		return ReasonAPIError
	}
}
