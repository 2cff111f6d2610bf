package agent

import (
	"context"
	"fmt"
	"log/slog"
)

// spiffeLogger adapts go-spiffe's logger to slog. go-spiffe's own messages
// go to debug level: the Source reports Workload API errors itself, once per
// change of reason, with a stable reason attribute.
type spiffeLogger struct{ log *slog.Logger }

func (l spiffeLogger) Debugf(format string, args ...any) { l.emit(format, args) }
func (l spiffeLogger) Infof(format string, args ...any)  { l.emit(format, args) }
func (l spiffeLogger) Warnf(format string, args ...any)  { l.emit(format, args) }
func (l spiffeLogger) Errorf(format string, args ...any) { l.emit(format, args) }

func (l spiffeLogger) emit(format string, args []any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("workloadapi: " + fmt.Sprintf(format, args...))
	}
}
