package export

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseMountinfo(t *testing.T) {
	in := `22 1 0:21 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
42 27 0:39 / /run/dataimage/export/pvc-1 rw,nosuid,nodev,relatime - fuse.dataimage dataimage:pvc-1 rw,user_id=0,group_id=0
43 27 0:40 / /mnt/with\040space rw master:1 shared:2 - ext4 /dev/loop3 rw
garbage line
44 27 0:41 / /x rw -
`
	ms, err := parseMountinfo(strings.NewReader(in))
	require.NoError(t, err)
	require.Equal(t, []mount{
		{Point: "/run", FSType: "tmpfs", Source: "tmpfs"},
		{Point: "/run/dataimage/export/pvc-1", FSType: "fuse.dataimage", Source: "dataimage:pvc-1"},
		{Point: "/mnt/with space", FSType: "ext4", Source: "/dev/loop3"},
	}, ms)
	require.Equal(t, `a\b`, unescapeOctal(`a\134b`))
	require.Equal(t, `a\9`, unescapeOctal(`a\9`))
	require.Equal(t, `\12`, unescapeOctal(`\12`))
	require.True(t, under("/a/b/c", "/a/b"))
	require.False(t, under("/a/bc", "/a/b"))
	require.False(t, under("/a/b", "/a/b"))
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add("42 27 0:39 / /run/x\\040y rw,relatime - fuse.dataimage dataimage:pvc-1 rw\n")
	f.Add("1 2 3 4 5 6 - a\n\\")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := parseMountinfo(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.FSType == "" || m.Point == "" {
				t.Fatalf("empty field in %+v", m)
			}
		}
	})
}
