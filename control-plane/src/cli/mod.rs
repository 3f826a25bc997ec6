//! The admin CLI (`portcullisctl`).
