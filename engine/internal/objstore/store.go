// Package objstore reads objects from S3-compatible stores (AWS S3, MinIO, Ceph RGW, and GCS or Azure
// through S3 gateways) for the file sources: an s3://bucket/key path is fetched into a local cache once,
// verified by size and ETag, and the source maps the cached file as it maps a local one.
//
// Credentials and the region come from the AWS SDK's standard chain (AWS_ACCESS_KEY_ID and friends, the
// shared config and credentials files, AWS_PROFILE). FERRY_S3_ENDPOINT (or AWS_ENDPOINT_URL) points it at
// another store, addressed path-style; TLS is verified unless the endpoint is plain http.
package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"

	"github.com/ferry-ml/ferry/engine/internal/cenv"
)

// Scheme is the prefix of an object path.
const Scheme = "s3://"

// IsURL reports whether path names an object (s3://bucket/key).
func IsURL(path string) bool { return strings.HasPrefix(path, Scheme) }

// Object is a parsed s3://bucket/key.
type Object struct{ Bucket, Key string }

func (o Object) String() string { return Scheme + o.Bucket + "/" + o.Key }

// Parse splits s3://bucket/key; both parts must be non-empty.
func Parse(url string) (Object, error) {
	if !IsURL(url) {
		return Object{}, fmt.Errorf("%q is not an s3:// URL", url)
	}
	bucket, key, ok := strings.Cut(strings.TrimPrefix(url, Scheme), "/")
	if !ok || bucket == "" || key == "" {
		return Object{}, fmt.Errorf("%q: an object URL is s3://bucket/key", url)
	}
	return Object{Bucket: bucket, Key: key}, nil
}

// Info is what a HEAD says of an object.
type Info struct {
	Size int64
	ETag string
}

// Error is a request that failed: the object, the byte range (if any), the last HTTP status and why.
type Error struct {
	Object Object
	Range  string // "bytes=a-b", or "" for the whole object or a HEAD
	Status int    // the last HTTP status, 0 when none came (the store did not answer)
	Err    error
}

func (e *Error) Error() string {
	s := e.Object.String()
	if e.Range != "" {
		s += " (" + e.Range + ")"
	}
	if e.Status != 0 {
		s += fmt.Sprintf(": HTTP %d", e.Status)
	}
	return s + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// NotFound reports whether the object or its bucket does not exist.
func (e *Error) NotFound() bool { return e.Status == http.StatusNotFound }

// Changed reports whether the object changed under a reader (its ETag no longer matches).
func (e *Error) Changed() bool { return e.Status == http.StatusPreconditionFailed }

// Options tune a Client; the zero value is the default.
type Options struct {
	Endpoint string        // overrides FERRY_S3_ENDPOINT and AWS_ENDPOINT_URL
	Deadline time.Duration // the longest one request is retried for; default 2 minutes
	Attempts int           // the most tries of one request; default 8
}

// Client is a store client with the standard credential chain. It is safe for concurrent use.
type Client struct {
	s3       *s3.Client
	deadline time.Duration
}

var (
	clientsMu sync.Mutex
	clients   = map[string]*Client{}
)

// Default is the process's client for the endpoint the environment names now (FERRY_S3_ENDPOINT,
// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL; none: AWS), with FERRY_S3_TIMEOUT (seconds a request may be
// retried for) and FERRY_S3_ATTEMPTS (tries of a request) when set, made on first use.
func Default() (*Client, error) {
	cenv.Sync()
	ep := endpointFromEnv()
	key := ep + "\x00" + os.Getenv("FERRY_S3_TIMEOUT") + "\x00" + os.Getenv("FERRY_S3_ATTEMPTS")
	clientsMu.Lock()
	defer clientsMu.Unlock()
	if c, ok := clients[key]; ok {
		return c, nil
	}
	o := Options{Endpoint: ep}
	if v, err := strconv.ParseFloat(os.Getenv("FERRY_S3_TIMEOUT"), 64); err == nil && v > 0 {
		o.Deadline = time.Duration(v * float64(time.Second))
	}
	if v, err := strconv.Atoi(os.Getenv("FERRY_S3_ATTEMPTS")); err == nil && v > 0 {
		o.Attempts = v
	}
	c, err := New(context.Background(), o)
	if err != nil {
		return nil, err
	}
	clients[key] = c
	return c, nil
}

// endpointFromEnv is the endpoint override the environment names, or "".
func endpointFromEnv() string {
	for _, k := range []string{"FERRY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return ""
}

// New makes a client: the SDK's credential chain and region (us-east-1 when none is configured), the
// endpoint override, path-style addressing with an endpoint, and retries with capped exponential backoff
// and jitter.
func New(ctx context.Context, o Options) (*Client, error) {
	cenv.Sync() // what a host program set after the library loaded
	endpoint := o.Endpoint
	if endpoint == "" {
		endpoint = endpointFromEnv()
	}
	attempts := o.Attempts
	if attempts <= 0 {
		attempts = 8
	}
	cfg, err := config.LoadDefaultConfig(ctx, config.WithLogger(logging.Nop{}), config.WithRetryer(func() aws.Retryer {
		return countRetries{retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = attempts
			so.MaxBackoff = 10 * time.Second // full jitter, doubling up to this
			so.RateLimiter = ratelimit.None  // no client-side retry quota: the deadline bounds a request
		})}
	}))
	if err != nil {
		return nil, fmt.Errorf("object store configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	c := &Client{deadline: o.Deadline}
	if c.deadline <= 0 {
		c.deadline = 2 * time.Minute
	}
	c.s3 = s3.NewFromConfig(cfg, func(so *s3.Options) {
		if endpoint != "" {
			so.BaseEndpoint = aws.String(endpoint)
			so.UsePathStyle = true
		}
	})
	return c, nil
}

// wrap turns an SDK error into an *Error with the HTTP status of the last answer.
func wrap(obj Object, rng string, err error) error {
	e := &Error{Object: obj, Range: rng, Err: err}
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		e.Status = re.HTTPStatusCode()
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		e.Err = fmt.Errorf("%s: %s", api.ErrorCode(), api.ErrorMessage())
		if api.ErrorMessage() == "" {
			e.Err = errors.New(api.ErrorCode())
		}
	}
	return e
}

// Head returns the object's size and ETag.
func (c *Client) Head(ctx context.Context, obj Object) (Info, error) {
	ctx, cancel := context.WithTimeout(ctx, c.deadline)
	defer cancel()
	out, err := c.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &obj.Bucket, Key: &obj.Key})
	if err != nil {
		return Info{}, wrap(obj, "", err)
	}
	return Info{Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag)}, nil
}

// ReadRange reads n bytes at off into dst[:n], only while the object's ETag is etag (else an error whose
// Changed is true). A short body is an error, never short data.
func (c *Client) ReadRange(ctx context.Context, obj Object, etag string, off int64, dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	rng := fmt.Sprintf("bytes=%d-%d", off, off+int64(len(dst))-1)
	ctx, cancel := context.WithTimeout(ctx, c.deadline)
	defer cancel()
	start := time.Now()
	defer func() { recordLatency(time.Since(start)) }()
	in := &s3.GetObjectInput{Bucket: &obj.Bucket, Key: &obj.Key, Range: &rng}
	if etag != "" {
		in.IfMatch = &etag
	}
	out, err := c.s3.GetObject(ctx, in)
	if err != nil {
		return wrap(obj, rng, err)
	}
	defer func() { _ = out.Body.Close() }()
	n := 0
	for n < len(dst) {
		m, err := out.Body.Read(dst[n:])
		n += m
		if err != nil {
			if n == len(dst) {
				break
			}
			return &Error{Object: obj, Range: rng, Err: fmt.Errorf("the body ended after %d of %d bytes: %w", n, len(dst), err)}
		}
	}
	return nil
}

// CreateBucket makes a bucket (tests and tools; a training run only reads).
func (c *Client) CreateBucket(ctx context.Context, bucket string) error {
	_, err := c.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket})
	if err != nil {
		return wrap(Object{Bucket: bucket}, "", err)
	}
	return nil
}

// Put writes an object (tests and tools; a training run only reads).
func (c *Client) Put(ctx context.Context, obj Object, data []byte) error {
	_, err := c.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: &obj.Bucket, Key: &obj.Key, Body: bytes.NewReader(data)})
	if err != nil {
		return wrap(obj, "", err)
	}
	return nil
}

// countRetries counts in Stats.Retries each attempt the SDK retries.
type countRetries struct{ aws.Retryer }

func (r countRetries) RetryDelay(attempt int, err error) (time.Duration, error) {
	Stats.Retries.Add(1)
	return r.Retryer.RetryDelay(attempt, err)
}

// Listed is an object of a listing: its key, size and ETag.
type Listed struct {
	Key  string
	Info Info
}

// List lists the objects of bucket whose keys start with prefix, in key order.
func (c *Client) List(ctx context.Context, bucket, prefix string) ([]Listed, error) {
	ctx, cancel := context.WithTimeout(ctx, c.deadline)
	defer cancel()
	var out []Listed
	p := s3.NewListObjectsV2Paginator(c.s3, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, wrap(Object{Bucket: bucket, Key: prefix}, "", err)
		}
		for _, o := range page.Contents {
			out = append(out, Listed{Key: aws.ToString(o.Key), Info: Info{Size: aws.ToInt64(o.Size), ETag: aws.ToString(o.ETag)}})
		}
	}
	return out, nil
}

// ParsePrefix splits s3://bucket[/prefix] into the bucket and the prefix without a trailing slash (empty
// for the whole bucket).
func ParsePrefix(url string) (bucket, prefix string, err error) {
	if !IsURL(url) {
		return "", "", fmt.Errorf("%q is not an s3:// URL", url)
	}
	bucket, prefix, _ = strings.Cut(strings.TrimPrefix(url, Scheme), "/")
	if bucket == "" {
		return "", "", fmt.Errorf("%q: a bucket URL is s3://bucket[/prefix]", url)
	}
	return bucket, strings.TrimSuffix(prefix, "/"), nil
}
