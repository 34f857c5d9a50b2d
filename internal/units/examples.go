package units

// Example is a text and what ParseSize makes of it: Bytes, or an error that contains Rule.
type Example struct {
	Text  string
	Bytes int64
	Rule  string
}

// Examples are the sizes people mix up, and texts that are not sizes, with what they mean. Every
// command's tests run its size flags through them, so that a size means the same to each.
var Examples = []Example{
	{Text: "1.5Gi", Bytes: 1610612736},
	{Text: "1536Mi", Bytes: 1610612736},
	{Text: "1.5G", Bytes: 1500000000},
	{Text: "1500M", Bytes: 1500000000},
	{Text: "100Gi", Bytes: 100 << 30},
	{Text: "1T", Bytes: 1e12},
	{Text: "4096", Bytes: 4096},
	{Text: "0", Rule: "must be positive"},
	{Text: "-1Gi", Rule: "must be positive"},
	{Text: "1.5", Rule: "not a whole number of bytes"},
	{Text: "0.1Ki", Rule: "not a whole number of bytes"},
	{Text: "8Ei", Rule: "too large"},
	{Text: "3K", Rule: "write k (1000 bytes) or Ki (1024 bytes)"},
	{Text: "12GB", Rule: `unknown unit "GB": write G`},
	{Text: "1 Gi", Rule: "want a number with an optional unit"},
}
