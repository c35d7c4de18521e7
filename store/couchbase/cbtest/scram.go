package cbtest

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"hash"
	"strconv"
	"strings"
)

// SCRAM (RFC 5802; RFC 7677 for SHA-256), server side, with the
// mechanism names kv_engine and gocbcore use.

var scramHashes = map[string]func() hash.Hash{
	"SCRAM-SHA512": sha512.New,
	"SCRAM-SHA256": sha256.New,
	"SCRAM-SHA1":   sha1.New,
}

const saslMechs = "SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN"

// scramCreds are the stored credentials of the one user, per mechanism.
type scramCreds struct {
	h         func() hash.Hash
	salt      []byte
	iter      int
	storedKey []byte
	serverKey []byte
}

func hmacSum(h func() hash.Hash, key []byte, msg string) []byte {
	m := hmac.New(h, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

func newScramCreds(password string, iter int) (map[string]*scramCreds, error) {
	out := map[string]*scramCreds{}
	for mech, h := range scramHashes {
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return nil, err
		}
		c, err := scramCredsFor(h, password, salt, iter)
		if err != nil {
			return nil, err
		}
		out[mech] = c
	}
	return out, nil
}

// scramCredsFor derives the stored credentials (RFC 5802 §3).
func scramCredsFor(h func() hash.Hash, password string, salt []byte, iter int) (*scramCreds, error) {
	salted, err := pbkdf2.Key(h, password, salt, iter, h().Size())
	if err != nil {
		return nil, err
	}
	ck := hmacSum(h, salted, "Client Key")
	sk := h()
	sk.Write(ck)
	return &scramCreds{h: h, salt: salt, iter: iter, storedKey: sk.Sum(nil), serverKey: hmacSum(h, salted, "Server Key")}, nil
}

// scramConv is one SCRAM conversation on a connection.
type scramConv struct {
	mech            string
	user            string
	clientFirstBare string
	serverFirst     string
	nonce           string
	gs2             string
}

// scramStart parses the client-first message and builds the server-first.
func scramStart(mech, clientFirst string, c *scramCreds) (*scramConv, error) {
	if !strings.HasPrefix(clientFirst, "n,") && !strings.HasPrefix(clientFirst, "y,") {
		return nil, errors.New("unsupported GS2 header (channel binding?)")
	}
	i := strings.Index(clientFirst[2:], ",")
	if i < 0 {
		return nil, errors.New("malformed GS2 header")
	}
	gs2 := clientFirst[:2+i+1]
	bare := clientFirst[len(gs2):]
	var user, cnonce string
	for _, f := range strings.Split(bare, ",") {
		switch {
		case strings.HasPrefix(f, "n="):
			user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(f[2:])
		case strings.HasPrefix(f, "r="):
			cnonce = f[2:]
		case strings.HasPrefix(f, "m="):
			return nil, errors.New("mandatory extension not supported")
		}
	}
	if user == "" || cnonce == "" {
		return nil, errors.New("client-first message lacks n= or r=")
	}
	sn := make([]byte, 18)
	if _, err := rand.Read(sn); err != nil {
		return nil, err
	}
	nonce := cnonce + base64.StdEncoding.EncodeToString(sn)
	sf := "r=" + nonce + ",s=" + base64.StdEncoding.EncodeToString(c.salt) + ",i=" + strconv.Itoa(c.iter)
	return &scramConv{mech: mech, user: user, clientFirstBare: bare, serverFirst: sf, nonce: nonce, gs2: gs2}, nil
}

// finish checks the client-final message's proof and returns the
// server-final message.
func (sc *scramConv) finish(clientFinal string, c *scramCreds, wantUser string) (string, error) {
	i := strings.LastIndex(clientFinal, ",p=")
	if i < 0 {
		return "", errors.New("client-final message lacks a proof")
	}
	withoutProof, proofB64 := clientFinal[:i], clientFinal[i+3:]
	var cb, nonce string
	for _, f := range strings.Split(withoutProof, ",") {
		switch {
		case strings.HasPrefix(f, "c="):
			cb = f[2:]
		case strings.HasPrefix(f, "r="):
			nonce = f[2:]
		}
	}
	if cb != base64.StdEncoding.EncodeToString([]byte(sc.gs2)) {
		return "", errors.New("channel binding does not match the GS2 header")
	}
	if nonce != sc.nonce {
		return "", errors.New("nonce mismatch")
	}
	proof, err := base64.StdEncoding.DecodeString(proofB64)
	if err != nil || len(proof) != len(c.storedKey) {
		return "", errors.New("malformed proof")
	}
	authMsg := sc.clientFirstBare + "," + sc.serverFirst + "," + withoutProof
	sig := hmacSum(c.h, c.storedKey, authMsg)
	clientKey := make([]byte, len(proof))
	for i := range proof {
		clientKey[i] = proof[i] ^ sig[i]
	}
	h := c.h()
	h.Write(clientKey)
	ok := subtle.ConstantTimeCompare(h.Sum(nil), c.storedKey) == 1
	if !ok || sc.user != wantUser {
		return "", errors.New("authentication failed")
	}
	return "v=" + base64.StdEncoding.EncodeToString(hmacSum(c.h, c.serverKey, authMsg)), nil
}
