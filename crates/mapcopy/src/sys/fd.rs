//! A `File` view of a borrowed file descriptor: std offers `File`'s
//! methods only on an owned `File`, and mapping takes any `AsFd`.
#![allow(unsafe_code)]

use std::fs::File;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};

/// `&File` for a [`BorrowedFd`], never closed.
pub(crate) struct FileRef<'a> {
    file: ManuallyDrop<File>,
    _borrow: PhantomData<BorrowedFd<'a>>,
}

impl<'a> FileRef<'a> {
    pub(crate) fn new(fd: BorrowedFd<'a>) -> FileRef<'a> {
        // SAFETY: `fd` stays open for 'a (what a BorrowedFd promises) and a
        // FileRef lives at most 'a; the File is never dropped (ManuallyDrop),
        // so this never closes the caller's fd; `File`'s methods only use it.
        let file = unsafe { File::from_raw_fd(fd.as_raw_fd()) };
        FileRef {
            file: ManuallyDrop::new(file),
            _borrow: PhantomData,
        }
    }
}

impl Deref for FileRef<'_> {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}
