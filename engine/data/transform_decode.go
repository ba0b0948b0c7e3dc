package data

import (
	"fmt"

	"github.com/ferry-ml/ferry/engine"
)

// DecodeImage decodes an encoded image (JPEG, PNG, WebP, BMP, TIFF, PPM/PGM, as the crops decode them: RGB
// as Pillow's convert("RGB") makes it) to its pixels, uint8 [Height, Width, 3], for data sets whose images
// all have one size (pre-resized sets, CIFAR or MNIST as PNG files). An image of another size fails its
// batch with an error naming the file, or is skipped with OnErrorSkip. On a GPU, JPEGs are decoded by
// nvJPEG straight into the batch, the others on the gather workers; no kernel runs.
type DecodeImage struct {
	Height, Width int
	// MaxPixels refuses larger images before they are decoded (DefaultMaxPixels when 0).
	MaxPixels int
}

func (t DecodeImage) String() string {
	return fmt.Sprintf("DecodeImage(%d x %d)", t.Height, t.Width)
}

// Outputs implements Transform: the field keeps its name and becomes uint8 [Height, Width, 3].
func (t DecodeImage) Outputs(in Field) ([]Field, error) {
	if t.Height < 1 || t.Width < 1 || t.Height > 1<<16 || t.Width > 1<<16 {
		return nil, fmt.Errorf("%w: %v: height and width must be 1..65536", engine.ErrInvalidArgument, t)
	}
	if t.MaxPixels < 0 {
		return nil, fmt.Errorf("%w: %v: max pixels %d is negative", engine.ErrInvalidArgument, t, t.MaxPixels)
	}
	if in.DType != Uint8 || len(in.Shape) != 1 {
		return nil, fmt.Errorf("%w: %v needs encoded image bytes (uint8 [N]); %q is %v %v", engine.ErrInvalidArgument, t, in.Name, in.DType, in.Shape)
	}
	return []Field{{Name: in.Name, DType: Uint8, Shape: []int{t.Height, t.Width, 3}}}, nil
}

func (t DecodeImage) traits() traits { return traits{decodes: true} }

func (t DecodeImage) bind(in Field, _ bool) (op, error) {
	if _, err := t.Outputs(in); err != nil {
		return nil, err
	}
	o := &decodeOp{t: t}
	if o.t.MaxPixels == 0 {
		o.t.MaxPixels = DefaultMaxPixels
	}
	return o, nil
}

// decodeOp is DecodeImage bound to a field.
type decodeOp struct{ t DecodeImage }

func (o *decodeOp) host(out [][]byte, in []byte, r rowArgs) {
	if err := o.hostErr(out, in, r); err != nil {
		clear(out[0])
	}
}

func (o *decodeOp) hostErr(out [][]byte, in []byte, r rowArgs) error {
	d := decoderPool.Get().(*decodedImage)
	defer decoderPool.Put(d)
	if err := decodeImage(in[:r.n], o.t.MaxPixels, d); err != nil {
		return err
	}
	if err := o.checkSize(d.w, d.h); err != nil {
		return err
	}
	copy(out[0], d.pix)
	return nil
}

func (o *decodeOp) checkSize(w, h int) error {
	if w != o.t.Width || h != o.t.Height {
		return fmt.Errorf("%w: the image is %d x %d pixels (width x height); %v takes %d x %d only", engine.ErrFormat, w, h, o.t, o.t.Width, o.t.Height)
	}
	return nil
}

func (o *decodeOp) launch(*kernelSet, *engine.Engine, launchArgs, []byte) ([]byte, error) {
	return nil, fmt.Errorf("%w: %v has no kernel", engine.ErrUnsupported, o.t)
}
