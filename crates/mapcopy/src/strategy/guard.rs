//! The `Guard` strategy (not implemented yet: see DESIGN §2).

use super::{Request, Snapshot, Strategy};
use crate::Error;
use crate::sys::detect;

pub(crate) fn check(req: Option<&Request<'_>>) -> Result<String, String> {
    let found = detect::fanotify_pre_content(req.map(|r| (r.file, &r.meta)));
    Err(format!(
        "{}; not implemented yet",
        found.unwrap_or_else(|e| e)
    ))
}

pub(crate) fn map(req: &Request<'_>) -> Result<Box<dyn Snapshot>, Error> {
    Err(Error::unsupported(
        Strategy::Guard,
        check(Some(req)).err().unwrap_or_default(),
    ))
}
