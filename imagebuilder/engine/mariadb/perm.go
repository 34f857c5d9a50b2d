package mariadb

import (
	"io/fs"
	"os/user"
	"slices"
	"strconv"
	"syscall"

	"github.com/dataimage/dataimage/imagebuilder/engine"
)

// canTraverse reports whether u may search the directory st describes: by owner, group
// (primary or supplementary) or other execute permission, as the kernel checks it.
func canTraverse(st fs.FileInfo, u *engine.User) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return true // not a Unix file system: let the server find out
	}
	perm := st.Mode().Perm()
	switch {
	case int(sys.Uid) == u.UID:
		return perm&0o100 != 0
	case inGroup(u, int(sys.Gid)):
		return perm&0o010 != 0
	}
	return perm&0o001 != 0
}

func inGroup(u *engine.User, gid int) bool {
	if gid == u.GID {
		return true
	}
	uu, err := user.LookupId(strconv.Itoa(u.UID))
	if err != nil {
		return false
	}
	ids, err := uu.GroupIds()
	if err != nil {
		return false
	}
	return slices.Contains(ids, strconv.Itoa(gid))
}
