# Sends one request signed with Chef's signed-header protocol, as done by
# Chef's own client library (mixlib-authentication), and prints the answer's
# body.
#
#   ruby chef_request.rb URL USER KEYFILE METHOD PATH [BODY]
#
# URL is the server's base, e.g. http://127.0.0.1:PORT; PATH may carry a
# query string, which, as in Chef, is not signed. BODY is sent as JSON; `-`
# reads it from standard input. Environment:
#   CHEF_SIGN_VERSION        signing protocol, 1.0, 1.1 or 1.3 (default 1.3)
#   CHEF_SERVER_API_VERSION  X-Ops-Server-API-Version (default 1)
#   CHEF_SHOW_STATUS=1       also print the status line to standard error
# Exits 1 on an HTTP error status (the body is still printed), 2 on usage or
# connection errors, including a connection closed without an answer.

# openssl first: mixlib-authentication 3.0.6 loads openssl/digest on its own,
# which on Ruby 3.1 breaks a later load of openssl.
require "openssl"
require "time"
require "net/http"
require "uri"
require "mixlib/authentication/signedheaderauth"

def fail_usage(msg)
  warn "chef_request.rb: #{msg}"
  exit 2
end

if ARGV.length < 5 || ARGV.length > 6
  fail_usage "usage: ruby chef_request.rb URL USER KEYFILE METHOD PATH [BODY]"
end
base, user, key_file, method, path, body = ARGV
body = $stdin.read if body == "-"
body ||= ""
version = ENV.fetch("CHEF_SIGN_VERSION", "1.3")
api_version = ENV.fetch("CHEF_SERVER_API_VERSION", "1")
algorithm = Mixlib::Authentication::SignedHeaderAuth::ALGORITHM_FOR_VERSION[version] ||
  fail_usage("unsupported signing version #{version}")
fail_usage "PATH must start with /" unless path.start_with?("/")

begin
  key = OpenSSL::PKey::RSA.new(File.read(key_file))
rescue StandardError => e
  fail_usage "cannot read RSA key #{key_file}: #{e.message}"
end
uri = URI.parse(base.chomp("/") + path)

headers = { "X-Ops-Server-API-Version" => api_version }
signer = Mixlib::Authentication::SignedHeaderAuth.signing_object(
  http_method: method.downcase.to_sym,
  path: uri.path,
  body: body,
  timestamp: Time.now.utc.iso8601,
  user_id: user,
  proto_version: version,
  headers: headers
)
headers.update(signer.sign(key, sign_algorithm: algorithm, sign_version: version))
headers["Accept"] = "application/json"
headers["Content-Type"] = "application/json" unless body.empty?
# Chef servers tell clients apart by it; any recent version does.
headers["X-Chef-Version"] = "18.0.0"

request = Net::HTTPGenericRequest.new(method.upcase, !body.empty?,
  method.upcase != "HEAD", uri.request_uri, headers)
request.body = body unless body.empty?

begin
  # No proxy from the environment, and no silent retry of a request whose
  # connection was closed: both would hide what the server did.
  response = Net::HTTP.start(uri.host, uri.port, nil, nil, nil, nil,
    use_ssl: uri.scheme == "https", open_timeout: 5, read_timeout: 30,
    max_retries: 0) do |http|
    http.request(request)
  end
rescue StandardError => e
  fail_usage "#{method.upcase} #{path}: #{e.class}: #{e.message}"
end

status = "HTTP #{response.code} #{response.message}"
warn status if ENV["CHEF_SHOW_STATUS"] == "1"
out = response.body.to_s
$stdout.write(out)
$stdout.write("\n") unless out.empty? || out.end_with?("\n")
unless response.is_a?(Net::HTTPSuccess)
  warn "chef_request.rb: #{method.upcase} #{path}: #{status}"
  exit 1
end
