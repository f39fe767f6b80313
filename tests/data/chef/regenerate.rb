# Writes vectors.json beside this file: Chef request signatures made with
# test_key.pem by Chef's own implementation, mixlib-authentication, for the
# Rust signer to match byte for byte.
#
#   ruby regenerate.rb            rewrite vectors.json
#   ruby regenerate.rb --check    exit 1 if vectors.json is not what this
#                                 script makes
#
# Needs Ruby with mixlib-authentication (Debian: ruby ruby-mixlib-authentication).
# RSA PKCS#1 v1.5 signatures are deterministic, so the output only changes
# with the inputs below, the key, or the library.

# openssl first: mixlib-authentication 3.0.6 loads openssl/digest on its own,
# which on Ruby 3.1 breaks a later load of openssl.
require "openssl"
require "json"
require "mixlib/authentication/signedheaderauth"
require "mixlib/authentication/version"

HERE = File.dirname(File.expand_path(__FILE__))
KEY_FILE = File.join(HERE, "test_key.pem")
OUT_FILE = File.join(HERE, "vectors.json")

TIMESTAMP = "2026-01-02T03:04:05Z".freeze
USER_ID = "vesemir-test".freeze
SERVER_API_VERSION = "1".freeze
VERSIONS = ["1.0", "1.1", "1.3"].freeze

REQUESTS = [
  {
    "name" => "get-org-search",
    "method" => "GET",
    "path" => "/organizations/acme/search/node",
    "body" => "",
  },
  {
    "name" => "post-partial-search",
    "method" => "POST",
    "path" => "/search/node",
    "body" => JSON.generate({ "name" => ["name"], "fqdn" => ["fqdn"], "ipaddress" => ["ipaddress"] }),
  },
  {
    # Repeated and trailing slashes are collapsed before signing.
    "name" => "get-messy-path",
    "method" => "GET",
    "path" => "//organizations//acme/nodes/web-01/",
    "body" => "",
  },
].freeze

SHA = {
  "sha1" => OpenSSL::Digest::SHA1,
  "sha256" => OpenSSL::Digest::SHA256,
}.freeze

def vector(key, request, version)
  algorithm = Mixlib::Authentication::SignedHeaderAuth::ALGORITHM_FOR_VERSION.fetch(version)
  signer = Mixlib::Authentication::SignedHeaderAuth.signing_object(
    http_method: request["method"].downcase.to_sym,
    path: request["path"],
    body: request["body"],
    timestamp: TIMESTAMP,
    user_id: USER_ID,
    proto_version: version,
    headers: { "X-Ops-Server-API-Version" => SERVER_API_VERSION }
  )
  # The same calls Chef's HTTP client makes (Chef::HTTP::Authenticator).
  headers = signer.sign(key, sign_algorithm: algorithm, sign_version: version)
  canonical = signer.canonicalize_request(algorithm, version)

  # Cross-checks against the protocol as documented, so that a vector can
  # never silently describe something other than what was sent.
  signature = headers.keys.grep(/\AX-Ops-Authorization-\d+\z/)
    .sort_by { |k| k[/\d+\z/].to_i }.map { |k| headers[k] }.join
  raw = signature.unpack1("m0")
  case version
  when "1.3"
    raise "1.3 signature does not verify" unless key.public_key.verify(SHA.fetch(algorithm).new, raw, canonical)
  else
    raise "#{version} signature does not decrypt to the canonical request" unless key.public_key.public_decrypt(raw) == canonical
  end
  raise "signature is not #{key.n.num_bytes} bytes" unless raw.bytesize == key.n.num_bytes

  {
    "name" => "#{request["name"]}-v#{version}",
    "input" => {
      "method" => request["method"],
      "path" => request["path"],
      "body" => request["body"],
      "timestamp" => TIMESTAMP,
      "user_id" => USER_ID,
      "sign_version" => version,
      "server_api_version" => SERVER_API_VERSION,
    },
    "canonical_request" => canonical,
    "x_ops_content_hash" => headers.fetch("X-Ops-Content-Hash"),
    "x_ops_sign" => headers.fetch("X-Ops-Sign"),
    "signature_base64" => signature,
    # Every header sign() returned, in its order.
    "headers" => headers.map { |name, value| [name, value] },
  }
end

key = OpenSSL::PKey::RSA.new(File.read(KEY_FILE))
vectors = REQUESTS.flat_map { |request| VERSIONS.map { |version| vector(key, request, version) } }
doc = {
  "generator" => "mixlib-authentication #{Mixlib::Authentication::VERSION}, Ruby #{RUBY_VERSION}, #{OpenSSL::OPENSSL_LIBRARY_VERSION}",
  "key" => "test_key.pem",
  "vectors" => vectors,
}
text = JSON.pretty_generate(doc) + "\n"

if ARGV == ["--check"]
  current = File.exist?(OUT_FILE) ? File.read(OUT_FILE) : ""
  # The generator line names tool versions, which may differ between
  # machines without the vectors changing.
  strip = ->(s) { s.sub(/^  "generator": .*\n/, "") }
  if strip.call(current) == strip.call(text)
    puts "vectors.json is up to date"
  else
    warn "vectors.json differs from what regenerate.rb makes"
    exit 1
  end
elsif ARGV.empty?
  File.write(OUT_FILE, text)
  puts "wrote #{OUT_FILE} (#{vectors.length} vectors)"
else
  warn "usage: ruby regenerate.rb [--check]"
  exit 2
end
