//! `.npy` matrices of f32 that never sit whole in memory: [`NpyRowWriter`] appends rows to a file
//! as they are produced (the row count goes into the header at the end), and [`NpyRows`] reads a
//! finished file back a block of rows at a time.
//!
//! The header is the NPY 1.0 one (`\x93NUMPY`, version 1.0, a little-endian u16 length, a Python
//! dict literal padded with spaces to a newline), fixed at 128 bytes so that it can be rewritten in
//! place.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};

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

/// An f32 `.npy` matrix on disk, read a block of rows at a time with positioned reads: the rows
/// pass through the page cache, not the process's memory, so reading a matrix of any size costs
/// one block of memory.
#[derive(Debug)]
pub struct NpyRows {
    file: std::fs::File,
    path: PathBuf,
    rows: usize,
    cols: usize,
    /// Byte offset of the first value.
    start: u64,
}

impl NpyRows {
    /// Opens a C-order little-endian f32 `.npy` file (NPY 1.0, 2.0 or 3.0) and checks its size.
    pub fn open(path: &Path) -> Result<Self, PathIoError> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).map_err(at(path))?;
        let bad = |m: String| PathIoError::new(path, std::io::Error::new(std::io::ErrorKind::InvalidData, m));
        let mut pre = [0u8; 12];
        let got = read_at_most(&file, &mut pre, 0).map_err(at(path))?;
        if got < 10 || &pre[..6] != b"\x93NUMPY" {
            return Err(bad("not an .npy file".into()));
        }
        let (len, offset) = match pre[6] {
            1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10),
            2 | 3 if got == 12 => (u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as usize, 12),
            v => return Err(bad(format!("unsupported .npy version {v}"))),
        };
        let mut dict = vec![0u8; len];
        file.read_exact_at(&mut dict, offset as u64).map_err(at(path))?;
        let dict = String::from_utf8_lossy(&dict);
        let (rows, cols) = parse_header(&dict).map_err(|m| bad(format!("{m} (header {})", dict.trim())))?;
        let start = (offset + len) as u64;
        let size = file.metadata().map_err(at(path))?.len();
        let want = start + (rows * cols * 4) as u64;
        if size != want {
            return Err(bad(format!("{size} bytes, but a {rows} × {cols} f32 matrix needs {want}")));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            rows,
            cols,
            start,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows `start .. start + out.nrows()` into `out`.
    pub fn read_into(&self, start: usize, mut out: ArrayViewMut2<f32>) -> Result<(), PathIoError> {
        use std::os::unix::fs::FileExt;
        let n = out.nrows();
        assert!(start + n <= self.rows && out.ncols() == self.cols, "rows {start}+{n} of {}", self.rows);
        let mut bytes = vec![0u8; n * self.cols * 4];
        let offset = self.start + (start * self.cols * 4) as u64;
        self.file.read_exact_at(&mut bytes, offset).map_err(at(&self.path))?;
        for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    /// Rows `range` as a matrix.
    pub fn read_rows(&self, range: std::ops::Range<usize>) -> Result<Array2<f32>, PathIoError> {
        let mut out = Array2::zeros((range.len(), self.cols));
        self.read_into(range.start, out.view_mut())?;
        Ok(out)
    }

    /// The given rows (any order) as a matrix, in that order.
    pub fn gather(&self, rows: &[usize]) -> Result<Array2<f32>, PathIoError> {
        let mut out = Array2::zeros((rows.len(), self.cols));
        for (i, &r) in rows.iter().enumerate() {
            self.read_into(r, out.slice_mut(ndarray::s![i..i + 1, ..]))?;
        }
        Ok(out)
    }

    /// The whole matrix in blocks of `block` rows: `(first row, rows)`.
    pub fn blocks(&self, block: usize) -> impl Iterator<Item = Result<(usize, Array2<f32>), PathIoError>> + '_ {
        let block = block.max(1);
        (0..self.rows)
            .step_by(block)
            .map(move |s| self.read_rows(s..(s + block).min(self.rows)).map(|m| (s, m)))
    }
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
fn read_at_most(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// `(rows, cols)` from an NPY header dict, which must describe a C-order `<f4` matrix.
fn parse_header(dict: &str) -> Result<(usize, usize), String> {
    let squeezed: String = dict.chars().filter(|c| !c.is_whitespace()).collect();
    if !squeezed.contains("'descr':'<f4'") {
        return Err("not a little-endian f32 matrix".into());
    }
    if !squeezed.contains("'fortran_order':False") {
        return Err("Fortran-order matrices are not supported".into());
    }
    let shape = squeezed
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("no shape")?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape ({shape})")))
        .collect::<Result<_, _>>()?;
    match dims[..] {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(format!("shape ({shape}) is not a matrix")),
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
        let rows = NpyRows::open(&path).unwrap();
        assert_eq!((rows.rows(), rows.cols()), (1001, 7));
        assert_eq!(rows.read_rows(0..1001).unwrap(), m);
        assert_eq!(rows.read_rows(998..1001).unwrap(), m.slice(ndarray::s![998.., ..]));
        let blocks: Vec<_> = rows.blocks(400).map(Result::unwrap).collect();
        assert_eq!(blocks.iter().map(|(s, b)| (*s, b.nrows())).collect::<Vec<_>>(), [(0, 400), (400, 400), (800, 201)]);
        assert_eq!(rows.gather(&[5, 0, 1000]).unwrap().row(2), m.row(1000));
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
    fn reads_a_header_as_numpy_writes_it() {
        // Version 2.0 (a u32 length), as numpy writes when a header outgrows 65,535 bytes.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        let len = 128 - 12;
        bytes.extend_from_slice(&(len as u32).to_le_bytes());
        let mut h = dict.as_bytes().to_vec();
        h.resize(len - 1, b' ');
        h.push(b'\n');
        bytes.extend_from_slice(&h);
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("np.npy");
        std::fs::write(&path, bytes).unwrap();
        let rows = NpyRows::open(&path).unwrap();
        assert_eq!(rows.read_rows(1..2).unwrap(), ndarray::array![[4.0f32, 5.0, 6.0]]);
        assert!(parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }").is_err());
        assert!(parse_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }").is_err());
        assert!(parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }").is_err());
    }

    #[test]
    fn a_file_that_is_not_npy_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        std::fs::write(&path, b"not a matrix").unwrap();
        assert!(NpyRows::open(&path).is_err());
        // A header that promises more rows than the file holds.
        let mut short = header(10, 4).to_vec();
        short.extend_from_slice(&[0u8; 4 * 4 * 9]);
        std::fs::write(&path, short).unwrap();
        assert!(NpyRows::open(&path).unwrap_err().to_string().contains("needs"));
    }
}
