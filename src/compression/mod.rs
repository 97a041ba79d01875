//! Columnar compression of old chunks (issue 18, in progress): the codecs first.
#![allow(dead_code)] // used by the compressed chunk storage still to come

pub mod codec;
