#![no_std]
// This file exists so that the crate has a library target (the observer-tests build script depends on it).
