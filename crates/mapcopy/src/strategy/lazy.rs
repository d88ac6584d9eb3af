//! The `Lazy` strategy (userfaultfd): being written.

use super::{Request, Snapshot, Strategy};
use crate::Error;

pub(crate) fn check(_req: Option<&Request<'_>>) -> Result<String, String> {
    Err("not implemented yet".into())
}

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    Err(Error::unsupported(
        Strategy::Lazy,
        check(Some(req)).err().unwrap_or_default(),
    ))
}
