package cbtest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Magic bytes of the memcached binary protocol.
const (
	magicReq       = 0x80
	magicRes       = 0x81
	magicAltReq    = 0x08
	magicAltRes    = 0x18
	magicServerReq = 0x82
)

// Opcodes the server knows.
const (
	opGet                 = 0x00
	opSet                 = 0x01
	opAdd                 = 0x02
	opReplace             = 0x03
	opDelete              = 0x04
	opNoop                = 0x0a
	opTouch               = 0x1c
	opGAT                 = 0x1d
	opHello               = 0x1f
	opSASLListMechs       = 0x20
	opSASLAuth            = 0x21
	opSASLStep            = 0x22
	opGetAllVBSeqnos      = 0x48
	opDCPOpen             = 0x50
	opDCPCloseStream      = 0x52
	opDCPStreamReq        = 0x53
	opDCPGetFailoverLog   = 0x54
	opDCPStreamEnd        = 0x55
	opDCPSnapshotMarker   = 0x56
	opDCPMutation         = 0x57
	opDCPDeletion         = 0x58
	opDCPExpiration       = 0x59
	opDCPNoop             = 0x5c
	opDCPBufferAck        = 0x5d
	opDCPControl          = 0x5e
	opDCPSystemEvent      = 0x5f
	opDCPSeqnoAdvanced    = 0x64
	opSelectBucket        = 0x89
	opGetClusterConfig    = 0xb5
	opGetCollectionsManif = 0xba
	opGetCollectionID     = 0xbb
	opSubdocMultiLookup   = 0xd0
	opSubdocMultiMutation = 0xd1
	opGetErrorMap         = 0xfe
)

// Status codes.
const (
	statusSuccess           = 0x00
	statusKeyENOENT         = 0x01
	statusKeyEEXISTS        = 0x02
	statusE2BIG             = 0x03
	statusEINVAL            = 0x04
	statusNotMyVBucket      = 0x07
	statusNoBucket          = 0x08
	statusAuthError         = 0x20
	statusAuthContinue      = 0x21
	statusERANGE            = 0x22
	statusRollback          = 0x23
	statusEACCESS           = 0x24
	statusUnknownCommand    = 0x81
	statusNotSupported      = 0x83
	statusEINTERNAL         = 0x84
	statusETmpFail          = 0x86
	statusXattrEINVAL       = 0x87
	statusUnknownCollection = 0x88
	statusUnknownScope      = 0x8c
	statusDurabilityInvalid = 0xa0
	statusDurabilityImposs  = 0xa1
	statusSyncWriteAmbig    = 0xa3
)

// Sub-document status codes (kv_engine include/mcbp/protocol/status.h).
const (
	statusSubdocPathENOENT           = 0xc0
	statusSubdocPathMismatch         = 0xc1
	statusSubdocPathEINVAL           = 0xc2
	statusSubdocPathE2BIG            = 0xc3
	statusSubdocValueCantInsert      = 0xc5
	statusSubdocDocNotJSON           = 0xc6
	statusSubdocPathEEXISTS          = 0xc9
	statusSubdocInvalidCombo         = 0xcb
	statusSubdocMultiPathFailure     = 0xcc
	statusSubdocSuccessDeleted       = 0xcd
	statusSubdocXattrInvalidFlags    = 0xce
	statusSubdocXattrCantModifyVattr = 0xd2
	statusSubdocMultiFailureDeleted  = 0xd3
	statusSubdocInvalidXattrOrder    = 0xd4
)

// HELLO feature codes.
const (
	featTLS                 = 0x02
	featMutationSeqno       = 0x04
	featXattr               = 0x06
	featXerror              = 0x07
	featSelectBucket        = 0x08
	featSnappy              = 0x0a
	featJSON                = 0x0b
	featDuplex              = 0x0c
	featUnorderedExecution  = 0x0e
	featTracing             = 0x0f
	featAltRequests         = 0x10
	featSyncReplication     = 0x11
	featCollections         = 0x12
	featPreserveTTL         = 0x14
	featClustermapKnownVer  = 0x1d
	featClustermapNotifBrif = 0x1f
)

// grantable are the HELLO features the server grants when asked. The rest
// (Snappy, clustermap pushes, durations, ...) are not implemented and never
// granted, so the client never relies on them. XATTR is granted because
// kv_engine refuses any xattr sub-document spec on a connection without
// it (NOT_SUPPORTED, "Connection not XATTR enabled":
// daemon/subdocument_validators.cc validate_xattr_section); gocbcore
// itself checks nothing before sending one.
var grantable = map[uint16]bool{
	featXattr:           true,
	featMutationSeqno:   true,
	featSyncReplication: true,
	featXerror:          true,
	featSelectBucket:    true,
	featJSON:            true,
	featAltRequests:     true,
	featCollections:     true,
	featPreserveTTL:     true,
}

// Datatype bits.
const (
	datatypeJSON   = 0x01
	datatypeSnappy = 0x02
	datatypeXattr  = 0x04
)

// maxBody bounds a request body; real servers cap values at 20 MiB.
const maxBody = 30 << 20

// packet is one memcached binary packet, request or response.
type packet struct {
	magic    byte
	opcode   byte
	datatype byte
	vbucket  uint16 // requests
	status   uint16 // responses
	opaque   uint32
	cas      uint64
	frames   []byte
	extras   []byte
	key      []byte
	value    []byte
}

var errBadMagic = errors.New("cbtest: unknown packet magic")

// readPacket reads one packet; alternative-encoded requests (magic 0x08)
// have their framing extras split off.
func readPacket(r *bufio.Reader) (*packet, error) {
	var h [24]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	p := &packet{magic: h[0], opcode: h[1], datatype: h[5], opaque: binary.BigEndian.Uint32(h[12:]), cas: binary.BigEndian.Uint64(h[16:])}
	keyLen, framesLen := int(binary.BigEndian.Uint16(h[2:])), 0
	switch p.magic {
	case magicReq:
		p.vbucket = binary.BigEndian.Uint16(h[6:])
	case magicAltReq:
		p.vbucket = binary.BigEndian.Uint16(h[6:])
		framesLen, keyLen = int(h[2]), int(h[3])
	case magicRes:
		p.status = binary.BigEndian.Uint16(h[6:])
	case magicAltRes:
		p.status = binary.BigEndian.Uint16(h[6:])
		framesLen, keyLen = int(h[2]), int(h[3])
	default:
		return nil, fmt.Errorf("%w 0x%02x", errBadMagic, p.magic)
	}
	extLen := int(h[4])
	bodyLen := int(binary.BigEndian.Uint32(h[8:]))
	if bodyLen > maxBody || framesLen+extLen+keyLen > bodyLen {
		return nil, fmt.Errorf("cbtest: bad packet lengths (body %d, frames %d, extras %d, key %d)", bodyLen, framesLen, extLen, keyLen)
	}
	body := make([]byte, bodyLen)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	p.frames = body[:framesLen]
	p.extras = body[framesLen : framesLen+extLen]
	p.key = body[framesLen+extLen : framesLen+extLen+keyLen]
	p.value = body[framesLen+extLen+keyLen:]
	if p.magic == magicAltReq {
		p.magic = magicReq
	}
	if p.magic == magicAltRes {
		p.magic = magicRes
	}
	return p, nil
}

// Request frame IDs (framing extras, §2.3).
const (
	frameReqDurability  = 1
	frameReqPreserveTTL = 5
)

// reqFrames is what a request's framing extras ask for.
type reqFrames struct {
	durability  byte // 0: none; 1 majority, 2 majority and persist on the active, 3 persist to majority
	preserveTTL bool // keep the document's expiry
}

// frameInfo reads the request's framing extras. Each frame's header byte
// holds its ID (high nibble) and length (low nibble); 15 in either means
// 15 plus the next byte. Frames the server does not implement are skipped.
func (p *packet) frameInfo() (reqFrames, error) {
	var out reqFrames
	f := p.frames
	for len(f) > 0 {
		id, n := int(f[0]>>4), int(f[0]&0x0f)
		f = f[1:]
		for _, v := range []*int{&id, &n} {
			if *v != 15 {
				continue
			}
			if len(f) == 0 {
				return out, errors.New("truncated frame header")
			}
			*v += int(f[0])
			f = f[1:]
		}
		if n > len(f) {
			return out, fmt.Errorf("frame %d: %d bytes of data, %d left", id, n, len(f))
		}
		switch id {
		case frameReqPreserveTTL:
			if n != 0 {
				return out, fmt.Errorf("preserve TTL frame with %d bytes of data", n)
			}
			out.preserveTTL = true
		case frameReqDurability:
			if n != 1 && n != 3 {
				return out, fmt.Errorf("durability frame with %d bytes of data", n)
			}
			out.durability = f[0]
		}
		f = f[n:]
	}
	return out, nil
}

// size is the encoded length of the packet.
func (p *packet) size() int {
	return 24 + len(p.extras) + len(p.key) + len(p.value)
}

// writeTo encodes the packet (never with frames) onto w.
func (p *packet) writeTo(w *bufio.Writer) error {
	var h [24]byte
	h[0] = p.magic
	h[1] = p.opcode
	binary.BigEndian.PutUint16(h[2:], uint16(len(p.key)))
	h[4] = byte(len(p.extras))
	h[5] = p.datatype
	if p.magic == magicRes {
		binary.BigEndian.PutUint16(h[6:], p.status)
	} else {
		binary.BigEndian.PutUint16(h[6:], p.vbucket)
	}
	binary.BigEndian.PutUint32(h[8:], uint32(len(p.extras)+len(p.key)+len(p.value)))
	binary.BigEndian.PutUint32(h[12:], p.opaque)
	binary.BigEndian.PutUint64(h[16:], p.cas)
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	for _, b := range [][]byte{p.extras, p.key, p.value} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// cidOpcodes carry a LEB128 collection id in front of the key when the
// connection negotiated collections (gocbcore memd/cidsupporttable.go).
var cidOpcodes = map[byte]bool{
	0x00: true, 0x01: true, 0x02: true, 0x03: true, 0x04: true, 0x05: true, 0x06: true,
	0x0e: true, 0x0f: true, 0x1c: true, 0x1d: true, 0x83: true, 0x94: true, 0x95: true,
	0xa0: true, 0xa2: true, 0xa8: true,
	0xc5: true, 0xc6: true, 0xc7: true, 0xc8: true, 0xc9: true, 0xca: true, 0xcb: true,
	0xcc: true, 0xcd: true, 0xce: true, 0xcf: true, 0xd0: true, 0xd1: true, 0xd2: true,
	0x57: true, 0x58: true, 0x59: true,
}

// appendLEB128 appends v as unsigned LEB128.
func appendLEB128(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// readLEB128 decodes a canonical unsigned LEB128 prefix of at most 5 bytes.
func readLEB128(b []byte) (uint32, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 5; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			if (i > 0 && b[i] == 0) || v > 0xffffffff {
				return 0, 0, errors.New("non-canonical or oversized LEB128 collection id")
			}
			return uint32(v), i + 1, nil
		}
	}
	return 0, 0, errors.New("unterminated LEB128 collection id")
}
