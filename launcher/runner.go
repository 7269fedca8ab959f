package launcher

import "context"

// JobRunner runs one job to its end. Commands take a JobRunner rather than calling Run directly, so their tests
// can use a fake that returns canned outcomes and errors without Python.
type JobRunner interface {
	Run(ctx context.Context, opts Options, spec Spec) (*Outcome, error)
}

// OneShot is the real JobRunner: a fresh `python -m mdn.runner` per job (see Run).
type OneShot struct{}

func (OneShot) Run(ctx context.Context, opts Options, spec Spec) (*Outcome, error) {
	return Run(ctx, opts, spec)
}
