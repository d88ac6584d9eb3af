//! Test machinery for mapcopy.
