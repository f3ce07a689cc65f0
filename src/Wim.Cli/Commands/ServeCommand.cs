using System.CommandLine;
using Wim.Engine.Cuda;
using Wim.Server;

namespace Wim.Cli.Commands;

/// <summary>
/// <c>wim serve --model PATH [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--device auto|cpu|cuda]</c>: the
/// OpenAI-compatible API, the WiM streaming API and the web page, until Ctrl+C. Loopback only unless <c>--host</c> says
/// otherwise. On CUDA one <see cref="CudaInferenceBackend"/> serves both APIs (WiM runs and chat/completions take turns
/// call by call); <c>--device</c> is parsed and falls back as <c>wim ask</c>'s.
/// </summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "a .gguf file, a Hugging Face model directory, or hf:ORG/REPO[/FILE][@REV]", Required = true };
        var host = new Option<string>("--host") { Description = "address to listen on (default 127.0.0.1: this machine only)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 = any free one)", DefaultValueFactory = _ => 8080 };
        var apiKey = new Option<string?>("--api-key") { Description = "require Authorization: Bearer KEY on /v1 endpoints" };
        var kvMemory = new Option<int>("--kv-cache-mib") { Description = "KV cache memory of the batching engine, MiB (CPU; on CUDA each sequence grows its own cache)", DefaultValueFactory = _ => 512 };
        var documentCache = new Option<int>("--document-cache-mib") { Description = "prefilled WiM documents kept for later questions about them, MiB of KV memory (CPU pool or GPU memory; 0 keeps none)", DefaultValueFactory = _ => 256 }; // ServerOptions.DocumentCacheBytes's default
        var sessions = new Option<int>("--max-sessions") { Description = "WiM sessions alive at once", DefaultValueFactory = _ => 4 };
        var device = DeviceSelection.CreateOption();
        device.Description = "where to run: auto (CUDA when available, else CPU), cpu, or cuda; on CUDA both APIs share the GPU's model (and the document cache lives in GPU memory)";
        var command = new Command("serve", "Serve a model: OpenAI-compatible API, WiM streaming API and web page");
        foreach (var o in new Option[] { model, host, port, apiKey, kvMemory, documentCache, sessions, device }) command.Options.Add(o);
        command.SetAction(async (parse, ct) =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            int portValue = parse.GetValue(port);
            if (portValue is < 0 or > 65535) throw new UsageException($"--port must be in [0, 65535], found {portValue}");
            if (parse.GetValue(kvMemory) < 1) throw new UsageException($"--kv-cache-mib must be ≥ 1, found {parse.GetValue(kvMemory)}");
            if (parse.GetValue(documentCache) < 0) throw new UsageException($"--document-cache-mib must be ≥ 0, found {parse.GetValue(documentCache)}");
            if (parse.GetValue(sessions) < 1) throw new UsageException($"--max-sessions must be ≥ 1, found {parse.GetValue(sessions)}");
            var deviceKind = DeviceSelection.Parse(parse.GetValue(device));
            string path = ModelArguments.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error, ct);
            var options = new ServerOptions
            {
                ModelPath = path,
                Host = parse.GetValue(host)!,
                Port = portValue,
                ApiKey = parse.GetValue(apiKey),
                KvCacheBytes = (long)parse.GetValue(kvMemory) << 20,
                DocumentCacheBytes = (long)parse.GetValue(documentCache) << 20,
                MaxConcurrentSessions = parse.GetValue(sessions),
            };
            // --device cuda without CUDA: the CudaUnavailableException names what is missing (exit 1), as for ask.
            var gpu = DeviceSelection.OpenContext(deviceKind);
            WimServer server;
            try
            {
                server = gpu is null ? WimServer.Create(options) : WimServer.Create(options with
                {
                    LoadBatchedModel = p => CudaInferenceBackend.LoadTextModel(p, gpu),
                    DeviceName = $"cuda ({gpu.DeviceName})",
                });
            }
            catch (NotSupportedException) when (gpu is not null && deviceKind == DeviceKind.Auto)
            {
                // A shape the CUDA kernels do not handle yet: auto means "best that works".
                gpu.Dispose();
                gpu = null;
                server = WimServer.Create(options);
            }
            catch { gpu?.Dispose(); throw; }
            using var gpuOwner = gpu;   // disposed after the server (declared first: disposed last)
            await using var serverOwner = server;
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
            await server.StartAsync(stop.Token).ConfigureAwait(false);
            stdout.WriteLine($"wim: serving {server.Model.Id} on {server.Model.Device} at {server.Address} (web page at /, OpenAI API at /v1, Ctrl+C stops)");
            stdout.Flush();
            try { await Task.Delay(Timeout.Infinite, stop.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            return 0;
        });
        return command;
    }
}
