//! Placeholder: filled in by the clip work.
