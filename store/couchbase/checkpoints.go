package couchbase

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/ordermail/ordermail/store"
)

// metaCheckpoints keeps one document per feed and vBucket in the metadata
// bucket, so that instances owning different vBuckets never write the same
// document, and a vBucket's checkpoint is saved whatever happens to the
// others.
type metaCheckpoints struct{ s *Store }

func checkpointKey(name string, vb uint16) string {
	return "checkpoint:" + name + ":" + strconv.Itoa(int(vb))
}

// Load reads the checkpoints of vbs, many at once.
func (m metaCheckpoints) Load(ctx context.Context, name string, vbs []uint16) (map[uint16]position, error) {
	docs, err := m.Owners(ctx, name, vbs)
	if err != nil {
		return nil, err
	}
	out := make(map[uint16]position, len(docs))
	for vb, d := range docs {
		out[vb] = d.position
	}
	return out, nil
}

func (m metaCheckpoints) Save(ctx context.Context, name string, vb uint16, p position) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = m.s.Upsert(ctx, store.Meta, checkpointKey(name, vb), b)
	return err
}

// ownedCheckpoint is a vBucket's checkpoint document in membership mode:
// the position, its owner and the ownership epoch. A claim raises the
// epoch; every write of the document is by CAS, so a member that lost the
// vBucket (it was paused past its TTL and another claimed it) cannot write
// it again.
type ownedCheckpoint struct {
	position
	Owner string `json:"owner,omitempty"`
	Epoch uint64 `json:"epoch,omitempty"`
}

// claim is a vBucket this member owns: the epoch it claimed and the CAS of
// its last write of the checkpoint document.
type claim struct {
	epoch, cas uint64
}

// errTaken says a vBucket's owner is a live member other than this one.
var errTaken = errors.New("owned by another live member")

// errFenced says the checkpoint document changed hands: this member no
// longer owns the vBucket and may write nothing for it.
var errFenced = errors.New("the vBucket changed hands (checkpoint CAS mismatch)")

// Claim makes me the owner of vb when its document names no owner, me, or
// a member that live says is not live; it returns where to stream from.
// start gives the position of a vBucket without a document (it is then
// created with it, before anything is streamed). errTaken when another
// live member owns it, or claimed it in between.
func (m metaCheckpoints) Claim(ctx context.Context, name string, vb uint16, me string, live func(string) bool,
	start func(context.Context) (position, error)) (position, claim, string, error) {
	key := checkpointKey(name, vb)
	ctx = withDurableMeta(ctx) // lost in a failover, the vBucket would be named to a member that no longer streams it
	d, err := m.s.Get(ctx, store.Meta, key)
	if errors.Is(err, store.ErrNotFound) {
		p, err := start(ctx)
		if err != nil {
			return position{}, claim{}, "", err
		}
		doc := ownedCheckpoint{position: p, Owner: me, Epoch: 1}
		b, _ := json.Marshal(doc)
		cas, err := m.s.Insert(ctx, store.Meta, key, b)
		if errors.Is(err, store.ErrExists) {
			return position{}, claim{}, "", errTaken
		}
		if err == nil {
			err = m.lostAnswer(vb)
		}
		return p, claim{epoch: 1, cas: cas}, "", err
	}
	if err != nil {
		return position{}, claim{}, "", err
	}
	var cur ownedCheckpoint
	if err := json.Unmarshal(d.Value, &cur); err != nil {
		// As lost (see unreadable): a fresh start, written over it by its CAS.
		m.unreadable(key, err)
		if cur.position, err = start(ctx); err != nil {
			return position{}, claim{}, "", err
		}
		// An epoch above any before it (epochs count claims; a CAS is far
		// larger), so that none is used twice.
		cur.Owner, cur.Epoch = "", d.CAS
	}
	if cur.Owner != "" && cur.Owner != me && live(cur.Owner) {
		return position{}, claim{}, cur.Owner, errTaken
	}
	next := ownedCheckpoint{position: cur.position, Owner: me, Epoch: cur.Epoch + 1}
	b, _ := json.Marshal(next)
	cas, err := m.s.Replace(ctx, store.Meta, key, b, d.CAS)
	if errors.Is(err, store.ErrCASMismatch) || errors.Is(err, store.ErrNotFound) {
		return position{}, claim{}, cur.Owner, errTaken
	}
	if err == nil {
		err = m.lostAnswer(vb)
	}
	if err != nil {
		return position{}, claim{}, "", err
	}
	return cur.position, claim{epoch: next.Epoch, cas: cas}, cur.Owner, nil
}

// lostAnswer is the test's claimFault: a claim made whose answer, and
// the read back, were lost.
func (m metaCheckpoints) lostAnswer(vb uint16) error {
	if m.s.claimFault == nil {
		return nil
	}
	return m.s.claimFault(vb)
}

// Disown writes vb's checkpoint with no owner if it names me, by its CAS,
// and says whether it did. A claim of ours that failed may have been made
// all the same (its answer and the read back lost): the document then
// names us, though we do not stream vb. A document changed meanwhile is an
// error: it is read again at the next try.
func (m metaCheckpoints) Disown(ctx context.Context, name string, vb uint16, me string) (bool, error) {
	key := checkpointKey(name, vb)
	ctx = withDurableMeta(ctx)
	d, err := m.s.Get(ctx, store.Meta, key)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var cur ownedCheckpoint
	if err := json.Unmarshal(d.Value, &cur); err != nil {
		m.unreadable(key, err)
		return false, nil // names no owner: the next claim writes it again
	}
	if cur.Owner != me {
		return false, nil
	}
	cur.Owner = ""
	b, _ := json.Marshal(cur)
	if _, err := m.s.Replace(ctx, store.Meta, key, b, d.CAS); err != nil {
		return false, err
	}
	return true, nil
}

// SaveOwned writes vb's position as its owner me, by the CAS of c; it
// returns the claim with the new CAS, or errFenced when the document
// changed hands.
func (m metaCheckpoints) SaveOwned(ctx context.Context, name string, vb uint16, me string, p position, c claim) (claim, error) {
	return m.writeOwned(ctx, name, vb, me, ownedCheckpoint{position: p, Owner: me, Epoch: c.epoch}, c)
}

// Release writes vb's last position with no owner, by the CAS of c, so that
// the member it is assigned to claims it at once.
func (m metaCheckpoints) Release(ctx context.Context, name string, vb uint16, me string, p position, c claim) error {
	// Lost in a failover, the document would name me again, who no longer
	// streams vb and never looks at it again, and the member it is
	// assigned to would find it taken for as long as I live.
	if m.s.releaseFail != nil {
		if err := m.s.releaseFail(vb); err != nil {
			return err // the test's: not made
		}
	}
	_, err := m.writeOwned(withDurableMeta(ctx), name, vb, me, ownedCheckpoint{position: p, Epoch: c.epoch}, c)
	if err == nil && m.s.releaseFault != nil {
		err = m.s.releaseFault(vb) // the test's: made, its answer and the read back lost
	}
	return err
}

// startedKey names the document that says a feed's --from-now start was
// written for every vBucket.
func startedKey(name string) string { return "checkpoint:" + name + ":started" }

// Started says whether the --from-now start of feed name was written for
// every vBucket (MarkStarted): a checkpoint document missing after that was
// lost, and its vBucket is streamed from its beginning, never from its end
// at a later start, which would skip what was written between.
func (m metaCheckpoints) Started(ctx context.Context, name string) (bool, error) {
	_, err := m.s.Get(ctx, store.Meta, startedKey(name))
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// MarkStarted records that every vBucket's start is written (Started),
// durably when asked.
func (m metaCheckpoints) MarkStarted(ctx context.Context, name string, durable bool) error {
	return m.insertIfAbsent(ctx, startedKey(name), []byte(`{"fromNow":true}`), durable)
}

// Begin writes vb's checkpoint document at p, naming no owner, unless it
// has one (another member's, or one written since): where a --from-now
// service starts, whoever claims vb later.
func (m metaCheckpoints) Begin(ctx context.Context, name string, vb uint16, p position, durable bool) error {
	b, err := json.Marshal(ownedCheckpoint{position: p})
	if err != nil {
		return err
	}
	return m.insertIfAbsent(ctx, checkpointKey(name, vb), b, durable)
}

// insertIfAbsent writes the metadata document key unless it exists,
// durably when asked.
func (m metaCheckpoints) insertIfAbsent(ctx context.Context, key string, value []byte, durable bool) error {
	if durable {
		ctx = withDurableMeta(ctx)
	}
	_, err := m.s.Insert(ctx, store.Meta, key, value)
	if errors.Is(err, store.ErrExists) {
		return nil
	}
	return err
}

// writeOwned writes doc by the CAS of c. A write of ours that timed out
// and could not be read back may have been made all the same, later, when
// its node answered again: our CAS is then not the document's, though no
// one else wrote it. A claim always raises the epoch, so a document at our
// epoch that names us, or no one (our own handover), holds a write of
// ours: doc is written again by its CAS. doc is never older than that late
// write: it was sent before doc's position was read, and positions only
// move on (or, after a rollback, go to the branch the stream runs on now,
// which must win). Any other document changed hands: errFenced.
func (m metaCheckpoints) writeOwned(ctx context.Context, name string, vb uint16, me string, doc ownedCheckpoint, c claim) (claim, error) {
	key := checkpointKey(name, vb)
	b, err := json.Marshal(doc)
	if err != nil {
		return c, err
	}
	cas := c.cas
	for attempt := 1; ; attempt++ {
		next, err := m.s.Replace(ctx, store.Meta, key, b, cas)
		if err == nil {
			return claim{epoch: c.epoch, cas: next}, nil
		}
		if !errors.Is(err, store.ErrCASMismatch) && !errors.Is(err, store.ErrNotFound) {
			return c, err
		}
		d, err := m.s.Get(ctx, store.Meta, key)
		if errors.Is(err, store.ErrNotFound) {
			return c, fmt.Errorf("vBucket %d: %w", vb, errFenced)
		}
		if err != nil {
			return c, fmt.Errorf("read %s after a CAS mismatch: %w", key, err)
		}
		var cur ownedCheckpoint
		if err := json.Unmarshal(d.Value, &cur); err != nil {
			m.unreadable(key, err)
			return c, fmt.Errorf("vBucket %d: %w", vb, errFenced) // not known ours: claimed again, and written, by the next claim
		}
		if cur.Epoch != c.epoch || (cur.Owner != me && cur.Owner != "") {
			return c, fmt.Errorf("vBucket %d: %w", vb, errFenced)
		}
		if attempt == 3 {
			return c, fmt.Errorf("write %s: still ours, but its CAS changed %d times", key, attempt)
		}
		cas = d.CAS
	}
}

// unreadable warns of a checkpoint document that is no checkpoint (edited
// by hand, written by something else): its vBucket is streamed as one
// whose document was lost, from its beginning (or where a --from-now feed
// started), and the document written again at its next save. Refused, it
// failed every start of a static feed, or left its vBucket unclaimed.
func (m metaCheckpoints) unreadable(key string, err error) {
	m.s.log.Warn("a checkpoint document is unreadable: its vBucket is streamed as if it had none, and the document written again",
		"document", key, "error", err)
}

// Owners reads the checkpoint documents of vbs, many at once: positions,
// and in membership mode their owners.
func (m metaCheckpoints) Owners(ctx context.Context, name string, vbs []uint16) (map[uint16]ownedCheckpoint, error) {
	out := map[uint16]ownedCheckpoint{}
	var mu sync.Mutex
	errs := parallel(ctx, vbs, func(ctx context.Context, vb uint16) error {
		d, err := m.s.Get(ctx, store.Meta, checkpointKey(name, vb))
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var c ownedCheckpoint
		if err := json.Unmarshal(d.Value, &c); err != nil {
			m.unreadable(checkpointKey(name, vb), err)
			return nil // as lost
		}
		mu.Lock()
		out[vb] = c
		mu.Unlock()
		return nil
	})
	if err := joinErrs(errs, len(vbs)); err != nil {
		return nil, err
	}
	return out, nil
}
