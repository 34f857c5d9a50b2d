package holder

// The wire protocol, between a client and the holder, over a SOCK_SEQPACKET Unix socket: each
// request and each reply is one packet, a JSON object, with descriptors attached as SCM_RIGHTS
// (put carries them to the holder, get's reply back). It is meant to change rarely, and to
// stay readable by an older holder or client when it does:
//
//   - every message carries "v", the protocol version (1); a message of a version the receiver
//     does not speak gets code "protocol";
//   - unknown fields are ignored, so a newer side may add some;
//   - an unknown op gets code "protocol" and changes nothing.
//
// Requests: {"v":1,"op":"put","key":K,"params":B} with descriptors: hold them and B (bytes,
// base64 in JSON) under K, replacing (and closing) what was held there. {"v":1,"op":"get","key":K}:
// the reply {"v":1,"params":B,"fds":N} carries N descriptors of the same open files (the holder
// keeps its own). {"v":1,"op":"drop","key":K}: close and forget them. {"v":1,"op":"list"}: the
// reply's "keys". A failed request's reply has "code" and "error".

import (
	"encoding/json"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	version = 1
	// maxPacket bounds a packet's JSON.
	maxPacket = 64 << 10
	// MaxFDs bounds the descriptors of one key.
	MaxFDs = 64
	// maxKey bounds a key's length: a path (an export's directory) fits.
	maxKey = 4096
)

// Error codes of replies.
const (
	codeNotFound = "notfound"
	codeInvalid  = "invalid"
	codeProtocol = "protocol"
	codeInternal = "internal"
)

type request struct {
	V      int    `json:"v"`
	Op     string `json:"op"`
	Key    string `json:"key,omitempty"`
	Params []byte `json:"params,omitempty"`
}

type reply struct {
	V      int      `json:"v"`
	Code   string   `json:"code,omitempty"`
	Error  string   `json:"error,omitempty"`
	Params []byte   `json:"params,omitempty"`
	FDs    int      `json:"fds,omitempty"`
	Keys   []string `json:"keys,omitempty"`
}

func validKey(key string) error {
	if key == "" || len(key) > maxKey {
		return fmt.Errorf("%w: key %q: want 1 to %d bytes", ErrInvalid, key, maxKey)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] == 0x7f {
			return fmt.Errorf("%w: key %q: control character", ErrInvalid, key)
		}
	}
	return nil
}

// send writes msg as one packet with fds attached.
func send(conn syscall.RawConn, msg any, fds []int) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if len(b) > maxPacket {
		return fmt.Errorf("%w: message of %d bytes, at most %d", ErrInvalid, len(b), maxPacket)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	var serr error
	err = conn.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), b, oob, nil, 0)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return &os.SyscallError{Syscall: "sendmsg", Err: err}
	}
	return nil
}

// recv reads one packet into msg and returns the descriptors that came with it, close-on-exec
// (MSG_CMSG_CLOEXEC: they are never inheritable, not even for an instant). It returns io.EOF
// (as a nil msg with ok false) when the peer closed.
func recv(conn syscall.RawConn, msg any) (fds []int, ok bool, err error) {
	buf := make([]byte, maxPacket+1)
	oob := make([]byte, unix.CmsgSpace(MaxFDs*4))
	var n, oobn, flags int
	var rerr error
	err = conn.Read(func(fd uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, false, &os.SyscallError{Syscall: "recvmsg", Err: err}
	}
	if oobn > 0 {
		if fds, err = parseRights(oob[:oobn]); err != nil {
			return nil, false, err
		}
	}
	fail := func(err error) ([]int, bool, error) {
		closeAll(fds)
		return nil, false, err
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fail(fmt.Errorf("%w: more than %d descriptors", ErrInvalid, MaxFDs))
	}
	if flags&unix.MSG_TRUNC != 0 || n > maxPacket {
		return fail(fmt.Errorf("%w: message larger than %d bytes", ErrInvalid, maxPacket))
	}
	if n == 0 && oobn == 0 {
		return nil, false, nil // the peer closed
	}
	if err := json.Unmarshal(buf[:n], msg); err != nil {
		return fail(fmt.Errorf("%w: %v", ErrProtocol, err))
	}
	return fds, true, nil
}

// parseRights returns the descriptors of the SCM_RIGHTS messages in oob, the control data of
// recv's recvmsg. That call passes MSG_CMSG_CLOEXEC, so the kernel installed them close-on-exec
// before any of them reached this process (TestHoldAcrossClose asserts FD_CLOEXEC on a received
// one); each is marked close-on-exec here again all the same, so that the guarantee does not
// rest on the flags of a call elsewhere.
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %v", ErrProtocol, err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m) // received with MSG_CMSG_CLOEXEC; unix.CloseOnExec again:
		for _, fd := range got {
			unix.CloseOnExec(fd)
		}
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("%w: SCM_RIGHTS: %v", ErrProtocol, err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
