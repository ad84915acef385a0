//! hostplane proxy (see DESIGN.md).
