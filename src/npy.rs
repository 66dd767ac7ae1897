//! `.npy` matrices of f32 that never sit whole in memory: [`NpyRowWriter`] appends rows to a file
//! as they are produced (the row count goes into the header at the end), and [`MappedMatrix`]
//! maps a finished file and views it as an `ArrayView2` without reading it.
//!
//! The header is the NPY 1.0 one (`\x93NUMPY`, version 1.0, a little-endian u16 length, a Python
//! dict literal padded with spaces to a newline), fixed at 128 bytes so that it can be rewritten in
//! place and the data stays 64-byte aligned for mapping.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ndarray::{ArrayView2, Axis};

use crate::atomic::AtomicFile;
use crate::path_io::{at, PathIoError};

/// Bytes of the header, preamble included.
const HEADER_LEN: usize = 128;

fn header(rows: usize, dim: usize) -> [u8; HEADER_LEN] {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut h = [b' '; HEADER_LEN];
    h[..6].copy_from_slice(b"\x93NUMPY");
    h[6] = 1;
    h[7] = 0;
    h[8..10].copy_from_slice(&((HEADER_LEN - 10) as u16).to_le_bytes());
    h[10..10 + dict.len()].copy_from_slice(dict.as_bytes());
    h[HEADER_LEN - 1] = b'\n';
    h
}

/// Writes an `n × dim` f32 `.npy` file row block by row block, atomically.
pub struct NpyRowWriter {
    out: Option<BufWriter<AtomicFile>>,
    path: PathBuf,
    dim: usize,
    rows: usize,
}

impl NpyRowWriter {
    pub fn create(path: &Path, dim: usize) -> Result<Self, PathIoError> {
        let file = AtomicFile::create(path).map_err(at(path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header(0, dim)).map_err(at(path))?;
        Ok(Self {
            out: Some(out),
            path: path.to_path_buf(),
            dim,
            rows: 0,
        })
    }

    /// Appends rows (each of `dim` values).
    pub fn push(&mut self, rows: ArrayView2<f32>) -> Result<(), PathIoError> {
        if rows.ncols() != self.dim {
            let msg = format!("rows of {} values for a matrix of {}", rows.ncols(), self.dim);
            return Err(PathIoError::new(&self.path, std::io::Error::other(msg)));
        }
        let out = self.out.as_mut().expect("open until finish");
        for row in rows.axis_iter(Axis(0)) {
            for &v in row {
                out.write_all(&v.to_le_bytes()).map_err(at(&self.path))?;
            }
        }
        self.rows += rows.nrows();
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the final header and moves the file into place; returns the number of rows.
    pub fn finish(mut self) -> Result<usize, PathIoError> {
        let out = self.out.take().expect("open until finish");
        let file = out.into_inner().map_err(|e| PathIoError::new(&self.path, e.into_error()))?;
        let mut f = file.file();
        f.seek(SeekFrom::Start(0)).map_err(at(&self.path))?;
        f.write_all(&header(self.rows, self.dim)).map_err(at(&self.path))?;
        file.commit().map_err(at(&self.path))?;
        Ok(self.rows)
    }
}

/// A memory-mapped f32 `.npy` matrix.
pub struct MappedMatrix {
    mmap: memmap2::Mmap,
    path: PathBuf,
}

impl MappedMatrix {
    pub fn open(path: &Path) -> Result<Self, PathIoError> {
        let file = std::fs::File::open(path).map_err(at(path))?;
        // SAFETY: the file is only read through the map; files this crate writes are renamed into
        // place whole and never modified afterwards.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(at(path))?;
        let m = Self {
            mmap,
            path: path.to_path_buf(),
        };
        m.try_view()?;
        Ok(m)
    }

    fn try_view(&self) -> Result<ArrayView2<'_, f32>, PathIoError> {
        use ndarray_npy::ViewNpyExt;
        ArrayView2::<f32>::view_npy(&self.mmap).map_err(|e| {
            PathIoError::new(&self.path, std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
        })
    }

    /// The matrix, read from the page cache as it is touched.
    pub fn view(&self) -> ArrayView2<'_, f32> {
        self.try_view().expect("checked when opened")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn streamed_rows_read_back_as_the_whole_matrix() {
        use ndarray_npy::ReadNpyExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let m = Array2::from_shape_fn((1001, 7), |(i, j)| (i * 7 + j) as f32 * 0.5 - 3.0);
        let mut w = NpyRowWriter::create(&path, 7).unwrap();
        for block in m.axis_chunks_iter(Axis(0), 300) {
            w.push(block).unwrap();
        }
        assert!(w.push(Array2::zeros((1, 3)).view()).is_err());
        assert_eq!(w.finish().unwrap(), 1001);
        let read = Array2::<f32>::read_npy(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(read, m);
        let mapped = MappedMatrix::open(&path).unwrap();
        assert_eq!(mapped.view(), m.view());
        // Only the finished file is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let mut w = NpyRowWriter::create(&path, 2).unwrap();
        w.push(Array2::ones((3, 2)).view()).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_that_is_not_npy_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        std::fs::write(&path, b"not a matrix").unwrap();
        assert!(MappedMatrix::open(&path).is_err());
    }
}
