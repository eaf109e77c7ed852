//! Everything between a folder of images on disk and a batch of normalised pixels. (Ingesting
//! new images safely is the `collect` crate's job.)
//!
//! - [`folder`]: find the images of a folder in one of the three supported layouts, with labels.
//! - [`decode`]: read one file into an RGB image, honouring EXIF orientation, refusing bombs.
//! - [`load`]: decode many files in parallel with a progress bar, reporting and skipping bad ones.
//! - [`preprocess`]: torchvision-style evaluation transform (resize, centre crop, normalise).
//! - [`augment`]: seeded training augmentation (random resized crop, flip, colour jitter and
//!   the texture-removing [`rendering`]s: sketch, edges, contours, cartoon, posterise, blur).
//! - [`sampler`]: P×K batch sampling with a defined epoch.
//! - [`atomic`]: all-or-nothing file writes.

pub mod atomic;
pub mod augment;
pub mod decode;
pub mod folder;
pub mod load;
pub mod preprocess;
pub mod rendering;
pub mod sampler;

pub use atomic::write_atomic;
pub use decode::{DecodeError, decode_image};
pub use folder::{ImageEntry, Layout, list_images};
pub use load::{LoadReport, load_images};
pub use preprocess::{Normalization, Preprocess};
