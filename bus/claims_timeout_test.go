package bus

import (
	"context"
	"fmt"
	"testing"

	"github.com/tqtriage/tqtriage/internal/retry"
)

// Seen in the container tests: while the claims stream's leader moved,
// the commit of a group of claims ran out of its own 30 s, and the jobs
// waiting on it failed for good instead of being delivered again.
func TestAClaimCommitThatRunsOutOfTimeIsTriedAgain(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("count: %w", context.DeadlineExceeded),
		fmt.Errorf("read count: %w", context.DeadlineExceeded),
		fmt.Errorf("store claim: %w", context.DeadlineExceeded),
	} {
		if !retry.IsRetryable(fmt.Errorf("objects-per-run admission: %w", claimFailed("run-1", err))) {
			t.Errorf("%v: not retryable", err)
		}
	}
	if got := claimFailed("run-1", fmt.Errorf("count: %w", context.DeadlineExceeded)).Error(); got != "claim run-1: not decided within 30s: count: context deadline exceeded" {
		t.Errorf("error text %q", got)
	}
}
