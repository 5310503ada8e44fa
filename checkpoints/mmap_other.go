//go:build !unix

package checkpoints

import (
	"errors"
	"os"
)

// mapFile is unavailable here: tensors are read with ReadAt on demand instead.
func mapFile(f *os.File, size int64) ([]byte, func() error, error) {
	return nil, nil, errors.ErrUnsupported
}
