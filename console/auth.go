package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ordermail/ordermail/metrics"
)

// sessionCookie names the cookie of a logged-in operator: a random session
// id, nothing else.
const sessionCookie = "ordermail-session"

// sessionCookieName is the session cookie's name of a console listening on
// listen: its port's, so that the consoles of several instances on one
// host (a browser sends a host's cookies to every port) each keep their
// own, where a login to one logged out of the others.
func sessionCookieName(listen string) string {
	if _, port, err := net.SplitHostPort(listen); err == nil && port != "" && port != "0" {
		return sessionCookie + "-" + port
	}
	return sessionCookie
}

// maxSessions bounds the sessions kept: a login beyond it ends the oldest.
const maxSessions = 256

// session is one login.
type session struct {
	csrf    string // the token every action of this session carries
	expires time.Time
	flash   flash // what the last action did, shown once
}

// flash is a message shown once, on the page an action leads back to.
type flash struct {
	Msg string
	Err bool
}

// sessions are the logins, kept in memory: a restart logs everyone out.
// They are found by the hash of their id, so that looking one up tells
// nothing about the ids kept.
type sessions struct {
	mu   sync.Mutex
	ttl  time.Duration
	now  func() time.Time
	byID map[[32]byte]*session
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, byID: map[[32]byte]*session{}}
}

// randomToken is 32 random bytes, URL-safe.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session and returns its id.
func (s *sessions) create() string {
	id := randomToken()
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var oldest [32]byte
	var oldestAt time.Time
	for k, v := range s.byID {
		if !now.Before(v.expires) {
			delete(s.byID, k)
			continue
		}
		if oldestAt.IsZero() || v.expires.Before(oldestAt) {
			oldest, oldestAt = k, v.expires
		}
	}
	if len(s.byID) >= maxSessions {
		delete(s.byID, oldest)
	}
	s.byID[sha256.Sum256([]byte(id))] = &session{csrf: randomToken(), expires: now.Add(s.ttl)}
	return id
}

// get returns a copy of the live session of id, and whether there is one.
func (s *sessions) get(id string) (session, bool) {
	if id == "" {
		return session{}, false
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[k]
	if !ok {
		return session{}, false
	}
	if !s.now().Before(sess.expires) {
		delete(s.byID, k)
		return session{}, false
	}
	return *sess, true
}

// takeFlash returns the session's message and forgets it.
func (s *sessions) takeFlash(id string) flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[sha256.Sum256([]byte(id))]
	if !ok {
		return flash{}
	}
	f := sess.flash
	sess.flash = flash{}
	return f
}

func (s *sessions) setFlash(id string, f flash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess, ok := s.byID[sha256.Sum256([]byte(id))]; ok {
		sess.flash = f
	}
}

// clear ends every session.
func (s *sessions) clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.byID)
}

func (s *sessions) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, sha256.Sum256([]byte(id)))
}

// equal compares two secrets in constant time, whatever their lengths.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// sessionID is the request's session cookie; empty without one.
func (c *Console) sessionID(r *http.Request) string {
	ck, err := r.Cookie(c.cookie)
	if err != nil {
		return ""
	}
	return ck.Value
}

// setSessionCookie sets a session cookie, gone when the browser closes, as
// the login page says: it carries no Max-Age, which would keep it across a
// browser's restart. The session itself ends on the server after
// SessionTTL either way.
func (c *Console) setSessionCookie(w http.ResponseWriter, id string, secure bool) {
	http.SetCookie(w, &http.Cookie{
		Name: c.cookie, Value: id, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure,
	})
}

func (c *Console) clearSessionCookie(w http.ResponseWriter, secure bool) {
	http.SetCookie(w, &http.Cookie{
		Name: c.cookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: secure,
	})
}

// overHTTPS says whether the browser reached the console over HTTPS: the
// console's own TLS (none yet), or a TLS-terminating proxy that says so
// (X-Forwarded-Proto: https, as nginx, Traefik and cloud load balancers
// set it). Its session cookie is then Secure: never sent in the clear.
// The header is taken from a proxy only: one on this host (a loopback
// peer) or a trusted one (--admin-trusted-proxies); a client that writes
// it itself is in the clear all the same.
func (c *Console) overHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	if !strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		return false
	}
	ip, ok := peer(r)
	return ok && (ip.IsLoopback() || c.trusted(ip))
}

// inTheClear says whether the admin token, or a session's cookie, would
// cross a network unencrypted on r: the console listens on an address
// other machines reach, r was not made over HTTPS, and it does not name a
// loopback host (a container published on its host's loopback is reached
// as localhost; an SSH tunnel, likewise). Logging in is refused then.
func (c *Console) inTheClear(r *http.Request) bool {
	return !c.overHTTPS(r) && !metrics.ListensOnLoopback(c.cfg.Listen, c.addr) && !metrics.LoopbackHost(r.Host)
}

// inTheClearText says why logging in is refused on a request inTheClear.
const inTheClearText = "Logging in here would send the admin token over the network unencrypted. " +
	"Reach the console over HTTPS (a TLS-terminating proxy that sets X-Forwarded-Proto: https, on this host or named by --admin-trusted-proxies) " +
	"or on loopback (ssh -L 9465:127.0.0.1:9465 this-host, then http://localhost:9465)."

// token is the admin token's hash as of now; nil while the token file
// cannot be read or holds no valid token (no login then, and no action).
// The file is read again when it changes (watchfile), and a token changed
// ends every session: a token rotated because it leaked must not leave the
// sessions made with it acting for hours.
func (c *Console) token() *[32]byte {
	if c.tokenFile == nil {
		return c.tokenHash.Load()
	}
	b, changedAt, err := c.tokenFile.Read(c.now())
	if err == nil {
		err = checkToken(string(b), "admin-token-file "+c.tokenFile.Path())
	}
	if err != nil {
		c.tokenWarn.Do(func() {
			c.log.Warn("the admin token file holds no token a login can use: logins and actions are refused until it does (said at most once a minute)", "error", err)
		})
		return nil
	}
	c.tokenMu.Lock()
	defer c.tokenMu.Unlock()
	old := c.tokenHash.Load()
	if !changedAt.After(c.tokenAt) { // as last seen, or an older read
		return old
	}
	c.tokenAt = changedAt
	h := sha256.Sum256([]byte(strings.TrimSpace(string(b))))
	if *old != h {
		c.tokenHash.Store(&h)
		c.sessions.clear()
		c.log.Warn("the admin token changed: every console session ended; log in with the new token")
	}
	return c.tokenHash.Load()
}

// startSession starts a session for a login with the token want (token's
// answer), unless the token changed since: a session made after the
// change had ended the others would outlive it.
func (c *Console) startSession(want *[32]byte) (string, bool) {
	c.tokenMu.Lock()
	defer c.tokenMu.Unlock()
	if c.tokenHash.Load() != want {
		return "", false
	}
	return c.sessions.create(), true
}

// securityHeaders are on every answer: no script, no frame, nothing from
// elsewhere, nothing cached.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'none'; object-src 'none'; "+
			"base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cross-Origin-Resource-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}
