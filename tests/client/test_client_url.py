"""Server URL and protocol parsing."""

import pytest

from pinrank_client import parse_url, parse_urls
from pinrank_client._url import Endpoint


@pytest.mark.parametrize(
    "url, protocol, expected",
    [
        ("localhost:8001", None, Endpoint("grpc", "localhost:8001")),
        ("localhost", None, Endpoint("grpc", "localhost:8001")),
        ("localhost", "http", Endpoint("http", "localhost:8000")),
        ("localhost:9000", "HTTP", Endpoint("http", "localhost:9000")),
        ("grpc://ranker:8001", None, Endpoint("grpc", "ranker:8001")),
        ("grpc://ranker", "grpc", Endpoint("grpc", "ranker:8001")),
        ("http://ranker:8000", None, Endpoint("http", "ranker:8000")),
        ("http://ranker", None, Endpoint("http", "ranker:8000")),
        ("http://ranker:8000/", None, Endpoint("http", "ranker:8000")),
        ("http://gw:80/triton", None, Endpoint("http", "gw:80/triton")),
        ("https://ranker.example.com", None, Endpoint("http", "ranker.example.com:443", ssl=True)),
        ("grpcs://ranker:9443", None, Endpoint("grpc", "ranker:9443", ssl=True)),
        ("HTTP://Ranker:8000", None, Endpoint("http", "ranker:8000")),
        ("[::1]:8001", None, Endpoint("grpc", "[::1]:8001")),
        ("  127.0.0.1:18001 ", None, Endpoint("grpc", "127.0.0.1:18001")),
    ],
)
def test_parse(url, protocol, expected):
    assert parse_url(url, protocol) == expected


def test_endpoint_url_round_trips():
    for url in ("grpc://h:1", "http://h:2", "https://h:3", "grpcs://h:4"):
        assert parse_url(url).url == url
        assert parse_url(parse_url(url).url) == parse_url(url)


@pytest.mark.parametrize(
    "url, protocol, message",
    [
        ("http://h:8000", "grpc", "says http but protocol='grpc'"),
        ("grpc://h:8001", "http", "says grpc but protocol='http'"),
        ("ftp://h", None, "unsupported URL scheme 'ftp'"),
        ("h:8001", "websocket", "unknown protocol 'websocket'"),
        ("", None, "empty server URL"),
        ("http://:8000", None, "no host"),
        ("h:notaport", None, "bad port"),
        ("grpc://h:8001/path", None, "take no path"),
        ("http://h:8000/?x=1", None, "no query"),
    ],
)
def test_parse_errors(url, protocol, message):
    with pytest.raises(ValueError, match=message):
        parse_url(url, protocol)


@pytest.mark.parametrize(
    "urls, expected",
    [
        ("h:1", ["grpc://h:1"]),
        ("h:1,h:2", ["grpc://h:1", "grpc://h:2"]),
        (" http://a:1 , http://b:2 ", ["http://a:1", "http://b:2"]),
        (["grpc://a", "b:9"], ["grpc://a:8001", "grpc://b:9"]),
        ("a:1,a:1,grpc://a:1", ["grpc://a:1"]),  # duplicates would skew round robin
    ],
)
def test_parse_urls(urls, expected):
    assert [e.url for e in parse_urls(urls)] == expected


@pytest.mark.parametrize(
    "urls, message",
    [
        ("grpc://a:1,http://b:2", "one protocol"),
        ("a:1,,b:2", "empty server URL"),
        ("", "empty server URL"),
        ([], "no server URL"),
        ([1], "must be strings"),
    ],
)
def test_parse_urls_errors(urls, message):
    with pytest.raises(ValueError, match=message):
        parse_urls(urls)


def test_bare_urls_follow_protocol():
    assert {e.protocol for e in parse_urls("a:1,b:2", "http")} == {"http"}
