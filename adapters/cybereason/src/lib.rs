//! Cybereason adapter (in progress).
