//! Placeholder: filled in by the prefetch work.
