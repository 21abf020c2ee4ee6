"""Training data: the built-in captioned shapes (`shapes`) and readers for img2dataset TFRecord,
WebDataset tar and open_clip TSV sources (`readers`), each giving `tf.data` pipelines through the
one image preprocessor."""

from keras_clip.data.readers import (SkipCounter, make_clip_dataset, read_source, read_tfrecord,
                                     read_tsv, read_webdataset)
from keras_clip.data.shapes import generate_shapes, shapes_dataset

__all__ = ["SkipCounter", "generate_shapes", "make_clip_dataset", "read_source", "read_tfrecord",
           "read_tsv", "read_webdataset", "shapes_dataset"]
