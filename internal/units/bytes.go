package units

import (
	"math"
	"strconv"
)

// byteUnits are FormatBytes's units: binary (IEC), 1024 of each make the next.
var byteUnits = [...]string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}

// FormatBytes writes a byte count for people, the one way every Dataimage output prints one: in
// binary (IEC) units, with at most three significant digits, as `ls -lh` and `df -h` do:
//
//	0 B, 1023 B, 4 KiB, 1.5 KiB, 412 MiB, 1.1 GiB, 64 GiB, -2 KiB
//
// A count of 1024 B and up is written in the largest unit that leaves at least 1 of it: as a
// whole number when it is a whole number of that unit (4 KiB, 32 GiB), else with one decimal
// below 10 units (1.5 GiB, 1.0 GiB for a few bytes less than 1 GiB) and none from 10 up (412 MiB),
// rounded to the nearest. Binary, because the sizes that users set (pools, volumes, PVCs)
// are in Gi and the store's blocks are 4 KiB: they print as the round numbers they are.
func FormatBytes(n int64) string {
	if n < 0 {
		// -n of math.MinInt64 is itself; as a uint64 it is still 2^63, the right magnitude.
		return "-" + formatBytes(uint64(-n))
	}
	return formatBytes(uint64(n))
}

func formatBytes(n uint64) string {
	if n < 1024 {
		return strconv.FormatUint(n, 10) + " B"
	}
	i, size := 0, uint64(1024)
	for i < len(byteUnits)-1 && n >= size<<10 {
		i, size = i+1, size<<10
	}
	if n%size == 0 {
		return strconv.FormatUint(n/size, 10) + " " + byteUnits[i]
	}
	v := float64(n) / float64(size)
	if v >= 9.95 && math.Round(v) >= 1024 && i < len(byteUnits)-1 {
		// 1023.6 KiB and up round to 1024 KiB: written as the next unit, 1.0 MiB.
		v, i = v/1024, i+1
	}
	if v < 9.95 {
		return strconv.FormatFloat(v, 'f', 1, 64) + " " + byteUnits[i]
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " " + byteUnits[i]
}
