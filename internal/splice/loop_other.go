//go:build !linux

package splice

// loopSet stands for the event loops this system does not have.
type loopSet struct{}

func startLoops(*Engine, int) (*loopSet, error) { return nil, nil }

func (*loopSet) add(*Session, Side, Side, Hooks, []byte) (bool, error) { return false, nil }
func (*loopSet) stop()                                                 {}
