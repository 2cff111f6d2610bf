package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/credflow/credflow/internal/logkey"
)

// Defaults of Config.
const (
	DefaultMaxBytes           = 100 << 20
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = 10 * time.Second
	DefaultQueue              = 4096
	DefaultFlushDelay         = 20 * time.Millisecond
)

// maxBatch bounds the events written with one write call.
const maxBatch = 256

// errorLogInterval is the least time between two log lines about failed
// writes.
const errorLogInterval = time.Minute

// File is the audit file as the writer uses it. *os.File is one.
type File interface {
	Write(p []byte) (int, error)
	// Truncate cuts the file to size bytes: the writer cuts off a write
	// that failed half-way.
	Truncate(size int64) error
	Sync() error
	Close() error
}

// Config configures a Writer. Only Path is required; every other zero
// value means its default.
type Config struct {
	// Path is the file the trail is written to. If it exists, the trail
	// in it goes on.
	Path string
	// MaxBytes is the size past which the file is rotated (default
	// DefaultMaxBytes); a file may exceed it by its rotate checkpoint.
	MaxBytes int64
	// MaxFiles is how many rotated files to keep, the oldest removed
	// first (default 0: keep all).
	MaxFiles int
	// CheckpointEvery is the number of records after which a checkpoint
	// is written (default DefaultCheckpointEvery).
	CheckpointEvery int
	// CheckpointInterval is the longest time a record waits for its
	// checkpoint (default DefaultCheckpointInterval). A checkpoint is
	// written at the interval only when records were written since the
	// last.
	CheckpointInterval time.Duration
	// Queue is how many events wait for the writer before Write drops
	// them (default DefaultQueue).
	Queue int
	// FlushDelay is how long the writer lets events gather after the
	// first of a batch before it writes them (default DefaultFlushDelay;
	// negative: none). The writer then wakes once per batch rather than
	// once per event, which is most of its cost under load; an event
	// reaches the file at most FlushDelay later for it.
	FlushDelay time.Duration
	// SVIDs gives the X.509-SVID whose key signs each checkpoint; the
	// current one is asked for at each checkpoint. Nil, or an error,
	// writes checkpoints unsigned.
	SVIDs x509svid.Source
	// Logger receives failed writes (at most one line a minute) and
	// unsigned checkpoints; nil discards them.
	Logger *slog.Logger
	// Metrics counts records, losses and checkpoints; nil counts nothing.
	Metrics *Metrics
	// Export, if set, is handed every event and gap, on the writer's
	// goroutine: after it is written, with its record's line (valid for
	// the call only), or, when writing it failed, with a zero Seq and
	// Prev and a nil line, so that a copy elsewhere loses nothing to a
	// full disk. It must not block.
	Export func(r *Record, line []byte)
	// Open opens the file at path for appending, creating it (mode 0600)
	// if need be. Nil opens it with os.OpenFile.
	Open func(path string) (File, error)
}

// Stats are a writer's counts since New.
type Stats struct {
	// Records counts the records written: events, gaps and
	// checkpoints.
	Records uint64
	// Events counts the events written.
	Events uint64
	// Dropped counts the events Write dropped: the queue was full, or
	// the writer had stopped.
	Dropped uint64
	// Failed counts the events lost because writing them failed.
	Failed uint64
	// WriteErrors counts the writes that failed.
	WriteErrors uint64
	// Checkpoints counts the checkpoints written.
	Checkpoints uint64
	// Rotations counts the files rotated.
	Rotations uint64
}

// Writer writes a trail. Write may be called from any goroutine; Run
// writes.
type Writer struct {
	cfg   Config
	log   *slog.Logger
	queue chan Event

	started, stopped atomic.Bool
	pendingDrops     atomic.Uint64 // dropped events not yet in a gap
	stats            struct {
		records, events, dropped, failed, writeErrors, checkpoints, rotations atomic.Uint64
	}

	// Owned by New, then by Run.
	f     File
	chain chainState // after the last record written or buffered
	saved chainState // before the first record in buf
	buf   []byte
	recs  []bufRecord // the records in buf, with Config.Export
	// In buf: events and, in a gap, the losses it reports.
	bufEvents, bufRecords       int
	bufGapDropped, bufGapFailed uint64
	failed                      uint64 // events lost to failed writes, not yet in a gap
	startGap                    string // a gap to write first, and why
	lastErrLog                  time.Time
	errsSinceLog                int
}

// bufRecord is a record in the buffer: where its line is, for Export.
type bufRecord struct {
	r          Record
	start, end int
}

// chainState is where the trail stands.
type chainState struct {
	seq             uint64 // of the last record
	prev            string // hash of the last record
	size            int64  // of the current file
	firstSeq        uint64 // of the current file's first record; 0: none yet
	sinceCheckpoint int    // records since the last checkpoint
}

// New opens the trail at cfg.Path, going on from its last record when the
// file (or, when it is missing, the newest rotated file) holds one. It
// refuses a file whose last complete line is not a record: that trail is
// for an operator to look at, not to be written after. Call Run to write.
func New(cfg Config) (*Writer, error) {
	if cfg.Path == "" {
		return nil, errors.New("audit: no Path for the trail")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.CheckpointEvery <= 0 {
		cfg.CheckpointEvery = DefaultCheckpointEvery
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.FlushDelay == 0 {
		cfg.FlushDelay = DefaultFlushDelay
	}
	if cfg.Open == nil {
		cfg.Open = openFile
	}
	w := &Writer{cfg: cfg, log: cfg.Logger, queue: make(chan Event, cfg.Queue)}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	t, err := readTrail(cfg.Path)
	if err != nil {
		return nil, err
	}
	w.chain = chainState{seq: t.seq, prev: t.prev, size: t.size, firstSeq: t.firstSeq}
	w.startGap = t.gap
	if w.f, err = cfg.Open(cfg.Path); err != nil {
		return nil, fmt.Errorf("audit: opening %s: %w", cfg.Path, err)
	}
	return w, nil
}

// openFile opens path for appending.
func openFile(path string) (File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
}

// Write queues e for the writer and returns at once. Write never blocks
// and does no I/O: when the queue is full, or Run has returned, e is
// dropped and counted, and the next record written is a gap that says how
// many were. A zero e.Time is the time of the call. Events of type gap or
// checkpoint, or of no type, are the writer's own: they are dropped.
func (w *Writer) Write(e Event) {
	if e.Type == "" || e.Type == TypeGap || e.Type == TypeCheckpoint || w.stopped.Load() {
		w.drop()
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	select {
	case w.queue <- e:
	default:
		w.drop()
	}
}

func (w *Writer) drop() {
	w.pendingDrops.Add(1)
	w.stats.dropped.Add(1)
	w.cfg.Metrics.droppedQueueFull()
}

// Stats returns the writer's counts so far.
func (w *Writer) Stats() Stats {
	return Stats{
		Records:     w.stats.records.Load(),
		Events:      w.stats.events.Load(),
		Dropped:     w.stats.dropped.Load(),
		Failed:      w.stats.failed.Load(),
		WriteErrors: w.stats.writeErrors.Load(),
		Checkpoints: w.stats.checkpoints.Load(),
		Rotations:   w.stats.rotations.Load(),
	}
}

// Run writes the queued events until ctx is done, then writes what is
// still queued and a final checkpoint, syncs and closes the file. It
// returns nil then; it is called once.
func (w *Writer) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("audit: Run called twice")
	}
	tick := time.NewTicker(w.cfg.CheckpointInterval)
	defer tick.Stop()
	gather := time.NewTimer(time.Hour)
	gather.Stop()
	if w.startGap != "" {
		w.appendGap(w.startGap)
		w.flush()
	}
	for {
		select {
		case e := <-w.queue:
			// Wait on the timer, not the queue: events sent meanwhile
			// wake nobody.
			if w.cfg.FlushDelay > 0 {
				gather.Reset(w.cfg.FlushDelay)
				select {
				case <-gather.C:
				case <-ctx.Done():
					gather.Stop()
				}
			}
			w.appendEvent(e)
			w.drain(len(w.queue))
		case <-tick.C:
			if w.chain.sinceCheckpoint > 0 || w.lossPending() {
				w.checkpoint(CheckpointPeriodic)
			}
		case <-ctx.Done():
			w.stopped.Store(true)
			w.drain(len(w.queue))
			w.checkpoint(CheckpointFinal)
			if w.f != nil {
				if err := w.f.Close(); err != nil {
					w.writeFailed(err)
				}
				w.f = nil
			}
			return nil
		}
	}
}

// drain writes n more events from the queue after those buffered, with
// one write call per maxBatch events.
func (w *Writer) drain(n int) {
	for i := range n {
		if i > 0 && i%maxBatch == 0 {
			w.flush()
		}
		w.appendEvent(<-w.queue)
	}
	w.flush()
}

// lossPending reports whether events were lost since the last gap.
func (w *Writer) lossPending() bool {
	return w.failed > 0 || w.pendingDrops.Load() > 0
}

// appendEvent buffers e's record, a gap before it if events were lost,
// and a checkpoint after it if it is due.
func (w *Writer) appendEvent(e Event) {
	if w.lossPending() && w.bufGapDropped == 0 && w.bufGapFailed == 0 {
		w.appendGap("")
	}
	e.Time = e.Time.UTC()
	r := Record{V: Version, Event: e}
	if !w.appendRecord(&r) {
		w.failed++
		w.stats.failed.Add(1)
		w.cfg.Metrics.droppedWriteError(1)
		return
	}
	w.bufEvents++
	if w.chain.sinceCheckpoint >= w.cfg.CheckpointEvery {
		w.checkpoint(CheckpointPeriodic)
	}
}

// appendGap buffers a gap for the losses not yet recorded.
func (w *Writer) appendGap(reason string) {
	r := Record{V: Version, Event: Event{Type: TypeGap, Time: time.Now().UTC(), Reason: reason},
		Dropped: w.pendingDrops.Load(), Failed: w.failed}
	if w.appendRecord(&r) {
		w.bufGapDropped, w.bufGapFailed = r.Dropped, r.Failed
	}
}

// appendRecord gives r its place in the chain (signing it if it is a
// checkpoint) and buffers its line, rotating the file first if the line
// would take it past MaxBytes. It reports false for a record that cannot
// be encoded.
func (w *Writer) appendRecord(r *Record) bool {
	line, err := w.encode(r)
	if err != nil {
		w.log.Error("audit: record not written", slog.String(logkey.Error, err.Error()))
		return false
	}
	if r.Type != TypeCheckpoint && w.chain.size+int64(len(w.buf)) > 0 &&
		w.chain.size+int64(len(w.buf)+len(line)+1) > w.cfg.MaxBytes {
		w.rotate()
		if line, err = w.encode(r); err != nil {
			return false
		}
	}
	if len(w.buf) == 0 {
		w.saved = w.chain
	}
	if w.cfg.Export != nil && r.Type != TypeCheckpoint {
		w.recs = append(w.recs, bufRecord{r: *r, start: len(w.buf), end: len(w.buf) + len(line)})
	}
	w.buf = append(append(w.buf, line...), '\n')
	w.bufRecords++
	w.chain.seq, w.chain.prev = r.Seq, hashLine(line)
	if w.chain.firstSeq == 0 {
		w.chain.firstSeq = r.Seq
	}
	if r.Type == TypeCheckpoint {
		w.chain.sinceCheckpoint = 0
	} else {
		w.chain.sinceCheckpoint++
	}
	return true
}

// encode places r after the last record and encodes it.
func (w *Writer) encode(r *Record) ([]byte, error) {
	r.Seq, r.Prev = w.chain.seq+1, w.chain.prev
	if r.Type == TypeCheckpoint {
		w.sign(r)
	}
	return r.marshal()
}

// sign signs the checkpoint r with the current SVID, or marks it unsigned.
func (w *Writer) sign(r *Record) {
	r.Signature, r.X5C, r.Unsigned = "", nil, ""
	if w.cfg.SVIDs == nil {
		r.Unsigned = UnsignedNoSVID
		return
	}
	svid, err := w.cfg.SVIDs.GetX509SVID()
	if err != nil || svid == nil || svid.PrivateKey == nil || len(svid.Certificates) == 0 {
		r.Unsigned = UnsignedNoSVID
		return
	}
	if err := r.sign(svid.PrivateKey, svid.Certificates); err != nil {
		w.log.Error("audit: checkpoint not signed", slog.String(logkey.Error, err.Error()))
		r.Signature, r.X5C, r.Unsigned = "", nil, UnsignedSignFailed
	}
}

// checkpoint writes a checkpoint (after a gap, if events were lost) and
// syncs the file.
func (w *Writer) checkpoint(kind string) bool {
	if w.lossPending() && w.bufGapDropped == 0 && w.bufGapFailed == 0 {
		w.appendGap("")
	}
	r := Record{V: Version, Event: Event{Type: TypeCheckpoint, Time: time.Now().UTC()}, Checkpoint: kind}
	if !w.appendRecord(&r) || !w.flush() {
		return false
	}
	if err := w.f.Sync(); err != nil {
		w.writeFailed(err)
	}
	w.stats.checkpoints.Add(1)
	w.cfg.Metrics.checkpoint(r.Signature != "")
	if r.Unsigned != "" {
		w.log.Warn("audit: checkpoint not signed", slog.String(logkey.Reason, r.Unsigned))
	}
	return true
}

// flush writes the buffered records with one write. If it fails, it cuts
// the file back to where it was, forgets the records (their events count
// as failed, for the next gap) and reports false.
func (w *Writer) flush() bool {
	if len(w.buf) == 0 {
		return true
	}
	defer func() {
		w.buf = w.buf[:0]
		clear(w.recs)
		w.recs = w.recs[:0]
		w.bufEvents, w.bufRecords, w.bufGapDropped, w.bufGapFailed = 0, 0, 0, 0
	}()
	err := w.reopen()
	if err == nil {
		var n int
		n, err = w.f.Write(w.buf)
		if err != nil && n > 0 {
			if terr := w.f.Truncate(w.saved.size); terr != nil {
				// Reopen cuts it when it can.
				w.f.Close()
				w.f = nil
			}
		}
	}
	if err != nil {
		w.writeFailed(err)
		w.chain = w.saved
		w.failed += uint64(w.bufEvents)
		w.stats.failed.Add(uint64(w.bufEvents))
		w.cfg.Metrics.droppedWriteError(w.bufEvents)
		for i := range w.recs {
			if r := &w.recs[i].r; r.Type != TypeGap { // a gap not written is written again
				r.Seq, r.Prev = 0, ""
				w.cfg.Export(r, nil)
			}
		}
		return false
	}
	for i := range w.recs {
		w.cfg.Export(&w.recs[i].r, w.buf[w.recs[i].start:w.recs[i].end])
	}
	w.chain.size += int64(len(w.buf))
	w.pendingDrops.Add(-w.bufGapDropped)
	w.failed -= w.bufGapFailed
	w.stats.records.Add(uint64(w.bufRecords))
	w.stats.events.Add(uint64(w.bufEvents))
	w.cfg.Metrics.recordsWritten(w.bufRecords)
	return true
}

// reopen opens the file again after a failure closed it, cutting off
// anything past the last record written.
func (w *Writer) reopen() error {
	if w.f != nil {
		return nil
	}
	f, err := w.cfg.Open(w.cfg.Path)
	if err != nil {
		return err
	}
	if err := f.Truncate(w.saved.size); err != nil {
		f.Close()
		return err
	}
	w.f = f
	return nil
}

// writeFailed counts a failed write and logs it, at most once per
// errorLogInterval.
func (w *Writer) writeFailed(err error) {
	w.stats.writeErrors.Add(1)
	w.cfg.Metrics.writeError()
	w.errsSinceLog++
	if now := time.Now(); now.Sub(w.lastErrLog) >= errorLogInterval {
		w.log.Error("audit: writing the trail failed; events are lost until it works again",
			slog.String(logkey.File, w.cfg.Path), slog.String(logkey.Error, err.Error()),
			slog.Int(logkey.Failures, w.errsSinceLog))
		w.lastErrLog, w.errsSinceLog = now, 0
	}
}

// rotate ends the current file with a rotate checkpoint, renames it after
// its first record and starts a new one. If the checkpoint or the rename
// fails, the trail goes on in the current file.
func (w *Writer) rotate() {
	if !w.checkpoint(CheckpointRotate) {
		return
	}
	rotated := rotatedName(w.cfg.Path, w.chain.firstSeq)
	if err := os.Rename(w.cfg.Path, rotated); err != nil {
		w.writeFailed(err)
		return
	}
	if err := w.f.Close(); err != nil {
		w.writeFailed(err)
	}
	w.f = nil
	w.chain.size, w.chain.firstSeq = 0, 0
	w.saved = w.chain
	if err := w.reopen(); err != nil {
		w.writeFailed(err) // the next flush tries again
	}
	w.stats.rotations.Add(1)
	w.cfg.Metrics.rotated()
	if w.cfg.MaxFiles > 0 {
		w.prune()
	}
}

// prune removes the oldest rotated files beyond MaxFiles.
func (w *Writer) prune() {
	files, err := rotatedFiles(w.cfg.Path)
	if err != nil {
		w.log.Warn("audit: listing rotated files", slog.String(logkey.Error, err.Error()))
		return
	}
	for len(files) > w.cfg.MaxFiles {
		if err := os.Remove(files[0].path); err != nil {
			w.log.Warn("audit: removing a rotated file", slog.String(logkey.File, files[0].path), slog.String(logkey.Error, err.Error()))
		}
		files = files[1:]
	}
}
