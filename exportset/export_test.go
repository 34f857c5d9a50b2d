package exportset

// Unprotected turns the push/collection protocol off (gc.go) until the returned function is
// called: the race test shows with it what the protocol prevents.
func Unprotected() (restore func()) {
	unprotected.Store(true)
	return func() { unprotected.Store(false) }
}
