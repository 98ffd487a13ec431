import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module.js';

async function bootstrap(): Promise<void> {
  const app = await NestFactory.create(AppModule);
  // Without this, SIGTERM kills the process mid-step instead of letting the worker
  // drain and hand its leases back.
  app.enableShutdownHooks();
  const port = Number(process.env.PORT ?? 3000);
  await app.listen(port);
  Logger.log(
    `Listening on http://localhost:${port} (try POST /runs {"topic":"..."}); dashboard at http://localhost:${port}/workflows`,
    'Sample',
  );
}

void bootstrap();
