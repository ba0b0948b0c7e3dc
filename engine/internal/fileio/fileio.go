// Package fileio opens files without the hang of a named pipe: opening a FIFO blocks until the other
// end opens it, which for a path given by mistake is for ever. Every open of a path that a caller names
// goes through here.
package fileio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// NotRegularError is the error of OpenRegular on a path that is not a regular file.
type NotRegularError struct {
	Path string
	Mode fs.FileMode
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is not a regular file (%v)", e.Path, e.Mode.Type())
}

// OpenRegular opens path read-only and returns it with its information. The open does not block (a named
// pipe with no writer would block it for ever), and the type is checked on the open descriptor, so a
// path swapped between a check and the open cannot slip through: anything but a regular file (a pipe, a
// directory, a device) is closed and refused with a *NotRegularError. Other errors are the operating
// system's, wrapped in an *fs.PathError.
func OpenRegular(path string) (*os.File, fs.FileInfo, error) {
	fd, err := openNoBlock(path, unix.O_RDONLY, 0)
	if err != nil {
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, &NotRegularError{Path: path, Mode: st.Mode()}
	}
	return f, st, nil
}

// OpenWrite opens path for writing with flag (os.O_CREATE, os.O_TRUNC, syscall.O_NOFOLLOW...; O_WRONLY
// is added) and perm. A named pipe that no one reads is refused with an error saying so, instead of the
// open blocking until a reader comes; one that has a reader is written as before, blocking writes and all.
func OpenWrite(path string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := openNoBlock(path, unix.O_WRONLY|flag, uint32(perm.Perm()))
	if errors.Is(err, unix.ENXIO) {
		if st, serr := os.Stat(path); serr == nil && st.Mode()&fs.ModeNamedPipe != 0 {
			return nil, fmt.Errorf("%s is a named pipe that no process has open for reading: %w", path, err)
		}
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openNoBlock opens path with O_NONBLOCK and O_CLOEXEC, then clears O_NONBLOCK, so that reads and writes
// behave as after a plain open.
func openNoBlock(path string, flag int, perm uint32) (int, error) {
	var fd int
	var err error
	for {
		fd, err = unix.Open(path, flag|unix.O_NONBLOCK|unix.O_CLOEXEC, perm)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		_ = unix.Close(fd)
		return -1, &fs.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return fd, nil
}
