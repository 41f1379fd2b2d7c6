//go:build !(linux || darwin)

package loadgen

import (
	"errors"
	"time"
)

// blockingAvailable says whether dialBlocking is implemented here: on
// other systems every connection goes through Go's network poller.
const blockingAvailable = false

type blockingSock struct{ stream }

func dialBlocking(string, time.Duration) (*blockingSock, error) {
	return nil, errors.New("loadgen: blocking sockets are not implemented on this system")
}
