package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/credflow/credflow/internal/config"
	"github.com/credflow/credflow/internal/logkey"
	"github.com/credflow/credflow/proxy/revoke"
)

// denyList is the sidecar's deny list and the source that keeps it.
type denyList struct {
	list *revoke.List
	run  func(context.Context) error
	// shared, with Redis, is where anomaly detection's revocations go to
	// reach every sidecar; nil with a file (the sidecar cannot write a
	// ConfigMap).
	shared revoke.Store
}

// redisLoadTimeout bounds the first read of the deny list from Redis.
const redisLoadTimeout = 5 * time.Second

// newDenyList reads the configured deny list once. A file that is missing
// or bad stops the start: a list that is not there must never be taken for
// an empty one. Redis out of reach does not: the sidecar starts, says so,
// and the source keeps trying (the list fills in when Redis answers).
func newDenyList(ctx context.Context, cfg *config.Revocation, log *slog.Logger) (*denyList, error) {
	if cfg == nil {
		return nil, nil
	}
	list := &revoke.List{}
	if cfg.File != "" {
		src := &revoke.FileSource{Path: cfg.File, Interval: cfg.Interval, List: list, Logger: log}
		if err := src.Load(); err != nil {
			return nil, fmt.Errorf("revocation.file: %w", err)
		}
		log.Info("revocation list: loaded", slog.String(logkey.File, cfg.File), slog.Int(logkey.Entries, list.Len()))
		return &denyList{list: list, run: src.Run}, nil
	}
	client := redis.NewClient(&redis.Options{Addr: cfg.RedisAddr})
	src := &revoke.RedisSource{Client: client, Key: cfg.RedisKey, Resync: cfg.Resync, List: list, Logger: log}
	lctx, cancel := context.WithTimeout(ctx, redisLoadTimeout)
	defer cancel()
	if err := src.Load(lctx); err != nil {
		log.Warn("revocation list: Redis unreachable at start; the list is empty until it answers",
			slog.String(logkey.Redis, cfg.RedisAddr), slog.String(logkey.Error, err.Error()))
	} else {
		log.Info("revocation list: loaded", slog.String(logkey.Redis, cfg.RedisAddr), slog.Int(logkey.Entries, list.Len()))
	}
	return &denyList{list: list, shared: &revoke.RedisStore{Client: client, Key: cfg.RedisKey}, run: func(ctx context.Context) error {
		defer client.Close()
		return src.Run(ctx)
	}}, nil
}
