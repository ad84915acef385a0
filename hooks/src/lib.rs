//! hostplane hooks (see DESIGN.md).
