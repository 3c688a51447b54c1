//! Pod VM provisioning from user data (process-user-data).
//!
//! Not built yet: this crate is being written.
