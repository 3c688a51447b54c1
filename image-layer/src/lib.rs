//! OCI layer unpacking (hostile-input proof), the layer store shared by digest, overlay rootfs mounts.
//!
//! Not built yet: this crate is being written.
