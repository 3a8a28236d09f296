//! kh-testbed.
