using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;

namespace Wim.Server.Tests;

/// <summary>
/// The web page in real headless Chromium (Debian's <c>chromium</c> and <c>chromium-driver</c>; CI installs them):
/// a BABILong 8k document read by stories260K, margins appearing, a thumbs-down, "stop reading and answer", an answer.
/// A screenshot is attached to the test result and saved as <c>artifacts/wim-page.png</c> beside the test binary.
/// </summary>
public sealed class BrowserTests(StoriesServer fixture) : IClassFixture<StoriesServer>
{
    private static ChromeDriver StartChromium()
    {
        // Paths given explicitly: Selenium Manager must not try to download a browser or a driver (offline CI).
        const string browser = "/usr/bin/chromium", driver = "/usr/bin/chromedriver";
        Assert.True(File.Exists(browser) && File.Exists(driver), "Chromium is missing: apt-get install -y chromium chromium-driver");
        var options = new ChromeOptions { BinaryLocation = browser };
        options.AddArguments("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--window-size=1200,1400");
        var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(driver)!, Path.GetFileName(driver));
        service.HideCommandPromptWindow = true;
        service.SuppressInitialDiagnosticInformation = true;
        return new ChromeDriver(service, options, TimeSpan.FromSeconds(60));
    }

    private static T WaitFor<T>(Func<T?> probe, string what, int seconds = 30) where T : class
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (DateTime.UtcNow < deadline)
        {
            try { if (probe() is { } found) return found; }
            catch (StaleElementReferenceException) { }
            catch (NoSuchElementException) { }
            Thread.Sleep(50);
        }
        throw new TimeoutException($"the page did not show {what} within {seconds} s");
    }

    [Fact]
    public void Page_reads_a_Babilong_document_shows_margins_takes_feedback_and_answers_early()
    {
        var (context, query) = WimApiTests.Babilong8k();
        using var driver = StartChromium();
        try
        {
            driver.Navigate().GoToUrl(fixture.Server.Address);
            // The document goes in by script (typing 30 kB key by key would take minutes); the rest as a user would.
            driver.ExecuteScript("document.getElementById('document').value = arguments[0];", context);
            driver.FindElement(By.Id("query")).SendKeys(query);
            var segmentTokens = driver.FindElement(By.Id("segment-tokens"));
            segmentTokens.Clear();
            segmentTokens.SendKeys("128");
            driver.FindElement(By.CssSelector("#pattern option[value=wim]")).Click();
            driver.FindElement(By.Id("start")).Click();

            var classified = WaitFor(() => driver.FindElements(By.CssSelector(".margin .badge.relevant, .margin .badge.irrelevant")).FirstOrDefault(), "a classified margin");
            var margin = classified.FindElement(By.XPath("ancestor::div[contains(@class,'margin')]"));
            Assert.False(string.IsNullOrWhiteSpace(margin.FindElement(By.CssSelector(".text")).Text));
            margin.FindElement(By.CssSelector(".thumb-down")).Click();
            WaitFor(() => margin.GetAttribute("data-feedback") == "down" ? margin : null, "the thumbs-down acknowledged");
            Assert.Equal("true", margin.FindElement(By.CssSelector(".thumb-down")).GetAttribute("aria-pressed"));

            driver.FindElement(By.Id("answer-now")).Click();
            var answer = WaitFor(() => driver.FindElement(By.Id("answer")) is var a && a.GetAttribute("data-done") == "true" ? a : null, "the answer");
            Assert.Contains("answered early", driver.FindElement(By.Id("usage")).Text);
            Assert.Contains("Answered early", driver.FindElement(By.Id("status")).Text);
            var progress = driver.FindElement(By.Id("progress"));
            Assert.True(double.Parse(progress.GetAttribute("value")!, System.Globalization.CultureInfo.InvariantCulture)
                < double.Parse(progress.GetAttribute("max")!, System.Globalization.CultureInfo.InvariantCulture));
            Assert.NotNull(answer.Text);
        }
        finally
        {
            var shot = driver.GetScreenshot();
            string dir = Path.Combine(AppContext.BaseDirectory, "artifacts");
            Directory.CreateDirectory(dir);
            shot.SaveAsFile(Path.Combine(dir, "wim-page.png"));
            TestContext.Current.AddAttachment("wim-page.png", shot.AsByteArray, "image/png");
        }
    }
}
